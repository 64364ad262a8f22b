"""The controller's authenticated debug API (ambit.debug.v1): proxies report their state, and
operators read the aggregate (`ambit proxy-status`, `ambit version`, `ambit describe`), as istiod
serves `istioctl proxy-status`. See docs/operations.md ("The debug API")."""

from controller.debug.proxystatus import proxy_status
from controller.debug.readers import ReaderAuth, TokenFileReaders, TokenReviewReaders
from controller.debug.reports import Report, ReportStore
from controller.debug.service import DebugServicer

__all__ = ["DebugServicer", "ReaderAuth", "Report", "ReportStore", "TokenFileReaders", "TokenReviewReaders",
           "proxy_status"]
