"""The Slurm executor and what it stands on: queue queries, the job records, the sbatch scripts, and what
one array element runs."""

from thresher.pipelines.engine.slurm.executor import Detached, DryRun, SlurmExecutor, wait_for_chain
from thresher.pipelines.engine.slurm.jobs import SubmittedJob, read_jobs
from thresher.pipelines.engine.slurm.queue import ENDED, ArrayTask, SlurmUnreachable, query_jobs
from thresher.pipelines.engine.slurm.scripts import SlurmOptions

__all__ = [
    "ENDED",
    "ArrayTask",
    "Detached",
    "DryRun",
    "SlurmExecutor",
    "SlurmOptions",
    "SlurmUnreachable",
    "SubmittedJob",
    "query_jobs",
    "read_jobs",
    "wait_for_chain",
]
