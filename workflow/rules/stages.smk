# One rule per stage of src/hybridir/pipeline/stages.py (commands, paths and params come from there).
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
        # From params' resources section. Snakemake caps threads at --cores and never runs jobs
        # needing more cores than that at once; it exports OMP_NUM_THREADS = threads, which sizes
        # torch's and faiss's thread pools. Under --executor slurm they become sbatch's
        # --cpus-per-task, --mem, --time and --gpus (gpu 0: none).
        threads: stage.threads
        resources:
            mem_mb=stage.mem_mb,
            runtime=stage.runtime,
            gpu=stage.gpus,
        log:
            f"logs/{stage.name}.log",
        benchmark:
            f"benchmarks/{stage.name}.tsv"
        conda:
            "../envs/hybridir.yaml"
        shell:
            "{params.cmd} > {log} 2>&1"
