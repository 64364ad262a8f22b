"""The controller's validating admission webhook: `kubectl apply` of an invalid Istio or Ambit object
is refused by the API server, naming the object, the field and the reason, instead of being stored
and then refused by the controller in the object's status (docs/operations.md, "The admission
webhook").

- `review`: one AdmissionReview in, its answer out (sans-IO, the controller's own validation).
- `server`: the HTTPS endpoint the API server calls (`--webhook-listen`).
- `patcher`: keeps the ValidatingWebhookConfiguration's `caBundle` on the mesh roots, and switches
  its `failurePolicy` to `Fail` once a dry run proves the API server reaches the webhook.
"""
