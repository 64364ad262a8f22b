"""The netns lab: nodes and pods made of network namespaces, veths and cgroups on one machine."""
