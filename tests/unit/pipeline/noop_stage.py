"""A stage that does nothing but say it ran: what a new stage is, one module (this one) and one line
in the stage list (tests/unit/pipeline/test_model_call_stages.py adds it)."""

from __future__ import annotations

from gateway.pipeline.stage import ModelRequest, Stage, StageResult


class NoOp(Stage):
    """A stage that does nothing but say it ran (a test adds it with one line in the stage list)."""

    name = "noop"
    runs = 0

    def before(self, req: ModelRequest) -> StageResult:
        NoOp.runs += 1
        return None
