"""Which exceptions are a user's mistake or an environment problem (printed as one line) rather
than a bug (printed with a traceback)."""

from __future__ import annotations


def is_user_error(e: BaseException) -> bool:
    from ambit.cgroups import CgroupError
    from ambit.lab.lab import LabError
    from ambit.lab.spec import SpecError
    from ambit.lab.store import StoreError
    from ambit.lab.topology import TopologyError
    kinds: tuple[type[BaseException], ...] = (LabError, SpecError, StoreError, TopologyError, CgroupError,
                                              FileNotFoundError, PermissionError)
    try:
        from controller.validation import ValidationError  # type: ignore[import-not-found]
        kinds += (ValidationError,)
    except ImportError:
        pass
    return isinstance(e, kinds)
