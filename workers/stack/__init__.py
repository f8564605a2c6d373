"""The native local stack: a real Kafka broker (KRaft) and a real Redis without Docker."""

from workers.stack.native import NativeStack, ServiceStatus, StackConfig, StackError

__all__ = ["NativeStack", "ServiceStatus", "StackConfig", "StackError"]
