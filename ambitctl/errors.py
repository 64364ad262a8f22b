"""Which exceptions are a user's mistake or an environment problem (printed as one line) rather
than a bug (printed with a traceback)."""

from __future__ import annotations


def is_user_error(e: BaseException) -> bool:
    from ambit.cgroups import CgroupError
    from ambit.labstore import StoreError
    from ambitctl.lab.lab import LabError
    from ambitctl.lab.spec import SpecError
    from ambitctl.lab.topology import TopologyError
    from ambitctl.selectors import SelectorError
    kinds: tuple[type[BaseException], ...] = (LabError, SpecError, StoreError, TopologyError, CgroupError,
                                              SelectorError, FileNotFoundError, PermissionError)
    from ambitctl.cluster import TargetError
    kinds += (TargetError,)
    try:
        from controller.validation import ValidationError  # type: ignore[import-not-found]
        kinds += (ValidationError,)
        from ambitctl.commands.config import InputError  # it reads kinds from the controller
        kinds += (InputError,)
    except ImportError:
        pass
    return isinstance(e, kinds)
