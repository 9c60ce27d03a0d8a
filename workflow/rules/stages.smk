# One rule per stage of src/hybridir/pipeline.py (commands, paths and params come from there).
# Each rule is a thin shell over a `hybridir` subcommand; its log and benchmark go to logs/ and benchmarks/.

for stage in STAGES:

    rule:
        name:
            stage.name
        input:
            [d.rstrip("/") for d in stage.deps],
        output:
            [smk_path(o) for o in stage.all_outs],
        params:
            # Bound here: a shell f-string would be formatted late, with the loop's last stage.
            cmd=stage.cmd,
            values=param_values(config, stage.params),
        # Snakemake exports OMP_NUM_THREADS = threads, and torch sizes its thread pool from it.
        threads: workflow.cores if stage.group in ("train", "evaluate") else 1
        log:
            f"logs/{stage.name}.log",
        benchmark:
            f"benchmarks/{stage.name}.tsv"
        conda:
            "../envs/hybridir.yaml"
        shell:
            "{params.cmd} > {log} 2>&1"
