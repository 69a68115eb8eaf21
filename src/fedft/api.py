"""fedft's public face: `fedft.run(config) -> Result` (everything the CLI does, callable from Python), and the
pieces a script may want: `prepare` (build an experiment), `assemble` (its federation)."""
from fedft.experiment import (Experiment, build_model, check_names, prepare, resolve_device,  # noqa: F401
                              to_examples)
from fedft.fl.privacy import client_dp, sample_level_dp  # noqa: F401
from fedft.fl.runners import parallel_clients  # noqa: F401
from fedft.driver import Result, assemble, resumable, resume_config, run  # noqa: F401
