"""The machinery that runs any stage: intake, batches, delivery and commits (`runner`), the
unit that flows (`work`, task frames in `framing`), poison isolation, delivery refusals,
and what a stage reports (`telemetry`)."""
