"""The Open Inference Protocol (KServe V2) gateway: HTTP and gRPC in front of the pipeline.

A stateless edge process (`conveyor gateway`): it authenticates a caller to a tenant, turns a
V2 inference request into an `InferenceRequest` on `<prefix>.requests`, and answers with the
result read from its own reply topic (synchronous), or at once with the task id
(asynchronous: `GET /v2/tasks/{id}` and an optional callback give the outcome).

This package's `__init__` imports nothing: the gRPC modules register the `inference.*`
protobuf messages in the process-wide descriptor pool, as tritonclient's do, so a process
that imports `tritonclient.grpc` (a test) must not import `workers.gateway.grpc_service`.
"""
