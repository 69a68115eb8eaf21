"""Experiment tracking: log.tensorboard writes each round's numbers (accuracy or the task's metrics, losses, bytes up
and down, epsilon, ...) as TensorBoard scalars under RUN/tensorboard, step = round; log.mlflow_uri logs the flattened
config as parameters and the same numbers as metrics to an MLflow run. For every task; a resumed run continues
the same TensorBoard folder (and opens a new MLflow run, tagged with the run folder).
"""
from __future__ import annotations

from pathlib import Path

from fedft.fl.hooks import Hook
from fedft.fl.parts import part

SKIP = ("round", "clients")  # not scalars


def scalars(row: dict) -> dict[str, float]:
    """The numbers of a written row (booleans and None left out)."""
    return {k: float(v) for k, v in row.items()
            if k not in SKIP and isinstance(v, (int, float)) and not isinstance(v, bool)}


def flat(config: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = str(v)
    return out


class Tracking(Hook):
    order = 99

    def __init__(self, tensorboard: bool, mlflow_uri: str, config: dict) -> None:
        self.tensorboard, self.mlflow_uri, self.config = tensorboard, mlflow_uri, config
        self.writer, self.mlflow = None, None

    def written(self, out_dir, row):
        values = scalars(row)
        if self.tensorboard:
            if self.writer is None:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(Path(out_dir) / "tensorboard"))
            for k, v in values.items():
                self.writer.add_scalar(k, v, row["round"])
            self.writer.flush()
        if self.mlflow_uri:
            if self.mlflow is None:
                import mlflow

                mlflow.set_tracking_uri(self.mlflow_uri)
                self.mlflow = mlflow.start_run(run_name=Path(out_dir).name, tags={"fedft.run": str(out_dir)})
                mlflow.log_params(flat(self.config))
            import mlflow

            mlflow.log_metrics(values, step=row["round"])

    def finish(self, out_dir, rounds):
        if self.writer is not None:
            self.writer.close()
        if self.mlflow is not None:
            import mlflow

            mlflow.end_run()
        return None


@part(95)
def tracking(b) -> None:
    log = b.exp.config.log
    if log.tensorboard or log.mlflow_uri:
        b.fed.hooks.append(Tracking(log.tensorboard, log.mlflow_uri, b.exp.config.to_dict()))
