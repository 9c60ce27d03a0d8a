# hybridir workflow. The rules are generated from the stage table in src/hybridir/pipeline/stages.py,
# the same table `hybridir dvc-yaml` writes as dvc.yaml, so Snakemake and DVC run one DAG.
#   snakemake --cores 2                                   # default pipeline (params.yaml)
#   snakemake --cores 2 --configfile config/smoke.yaml    # minutes-long smoke run
#   snakemake --profile profiles/slurm --configfile config/paper.yaml   # on a Slurm cluster (README)
# Each job's threads, memory, time and GPUs come from the params file's resources section.
from hybridir.pipeline.config import load_params, validate
from hybridir.pipeline.stages import param_values, record_dvc_lock, stages

configfile: "params.yaml"

import os

PARAMS_FILE = (os.path.relpath(workflow.overwrite_configfiles[-1])
               if workflow.overwrite_configfiles else "params.yaml")
if workflow.config_settings.config:
    # The stage commands read the params file, so --config overrides would not reach them.
    raise ValueError("hybridir: change parameters in params.yaml or pass a whole file with "
                     "--configfile FILE; --config KEY=VALUE overrides are not supported")
load_params(PARAMS_FILE)  # the stages read this file alone, so it must be complete and valid by itself
validate(config, PARAMS_FILE)
STAGES = stages(config, str(PARAMS_FILE))

include: "workflow/rules/common.smk"
include: "workflow/rules/stages.smk"


rule all:
    default_target: True
    input:
        [target(o) for s in STAGES if s.name == "report" for o in s.all_outs],


onsuccess:
    # Switching engines costs nothing: DVC sees this run's outputs as its own (dvc.lock).
    print(f"hybridir: {record_dvc_lock(STAGES, config, PARAMS_FILE)}")
