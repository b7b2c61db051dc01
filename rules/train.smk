rule train:
    """GRPO fine-tuning with one method of the comparison and one training seed (resumes from
    its checkpoint)."""
    input:
        train=f"{DATASET_DIR}/train.parquet",
        base=base_model_files,
        card=train_card,
        code=stage_sources("train"),
        mlflow=MLFLOW_RECORD,
    output:
        metrics=f"{RESULTS}/train/{{method}}/seed{{seed}}/metrics.parquet",
        probe=f"{RESULTS}/train/{{method}}/seed{{seed}}/probe.parquet",
        weights=f"{RESULTS}/train/{{method}}/seed{{seed}}/weights.safetensors",
        info=f"{RESULTS}/train/{{method}}/seed{{seed}}/train_info.json",
        snapshots=directory(f"{RESULTS}/train/{{method}}/seed{{seed}}/snapshots"),
        run_id=f"{RESULTS}/train/{{method}}/seed{{seed}}/mlflow_run_id.txt",
    log:
        f"{RESULTS}/logs/train/{{method}}/seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{method}}/seed{{seed}}.tsv"
    conda:
        "../envs/pipeline.yaml"
    threads: 2
    # One process per GPU granted (torchrun inside the job; a --resources gpu cap below
    # train.gpus lowers the grant, not the results); the threads are shared between them.
    # With train.nodes > 1, one SLURM allocation of that many nodes (rules/common.smk).
    resources:
        **TRAIN_RESOURCES,
    params:
        cfg=train_params,
        runtime=runtime_json(stage_json.train_runtime),
        base_dir=base_model_dir(),
        card=card_flag,
        out_dir=output_dir,
        wildcards=wildcards_json,
    shell:
        keep_failed_log(
            TRAIN_LAUNCH
            + "python -u -m pipeline.stages.train --method {wildcards.method:q} --train {input.train:q} "
            "--base-model {params.base_dir:q} --config-json {params.cfg:q} --runtime-json {params.runtime:q} "
            "--out-dir {params.out_dir:q} {params.card} "
            "--threads {threads} "
            + TRAIN_PROCESSES
            + " --mlflow-record {input.mlflow:q} --rule train "
            "--wildcards {params.wildcards:q} --run-id-file {output.run_id:q}"
        )
