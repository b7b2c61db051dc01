rule pretrain_base:
    """Rectified-flow pretraining of the mini base model (resumes from its checkpoint)."""
    input:
        train=f"{DATASET_DIR}/train.parquet",
        code=stage_sources("pretrain_base"),
        mlflow=MLFLOW_RECORD,
    output:
        info=f"{BASE_DIR}/train_info.json",
        model=f"{BASE_DIR}/model/model.safetensors",
        model_config=f"{BASE_DIR}/model/config.json",
        metrics=f"{BASE_DIR}/metrics.parquet",
        run_id=f"{BASE_DIR}/mlflow_run_id.txt",
    log:
        f"{RESULTS}/logs/pretrain_base.log",
    benchmark:
        f"{RESULTS}/benchmarks/pretrain_base.tsv"
    conda:
        "../envs/pipeline.yaml"
    threads: 2
    resources:
        gpu=1,
    params:
        cfg=config_json("pretrain_base"),
        runtime=runtime_json(stage_json.pretrain_base_runtime),
        out_dir=output_dir,
    shell:
        keep_failed_log(
            GPU_SLOTS
            + "python -u -m pipeline.stages.pretrain_base --train {input.train:q} --config-json {params.cfg:q} "
            "--runtime-json {params.runtime:q} "
            "--out-dir {params.out_dir:q} --threads {threads} --mlflow-record {input.mlflow:q} "
            "--rule pretrain_base --run-id-file {output.run_id:q}"
        )


rule base_group_spreads:
    """The base model's SDE groups under the training sampler: each reward's within-group spread
    (the report's unit of z, and the control arm's weights)."""
    input:
        model=f"{BASE_DIR}/model/model.safetensors",
        test=f"{DATASET_DIR}/test.parquet",
        code=stage_sources("base_group_spreads"),
        mlflow=MLFLOW_RECORD,
    output:
        spreads=SPREADS,
        run_id=f"{BASE_DIR}/card/group_spreads_mlflow_run_id.txt",
    log:
        f"{RESULTS}/logs/base_group_spreads.log",
    benchmark:
        f"{RESULTS}/benchmarks/base_group_spreads.tsv"
    conda:
        "../envs/pipeline.yaml"
    threads: 2
    resources:
        gpu=1,
    params:
        cfg=config_json("base_group_spreads"),
        model_dir=lambda wildcards, input: str(Path(input.model).parent),
    shell:
        keep_failed_log(
            GPU_SLOTS
            + "python -u -m pipeline.stages.base_group_spreads --model-dir {params.model_dir:q} --test {input.test:q} "
            "--config-json {params.cfg:q} --out {output.spreads:q} --threads {threads} "
            "--mlflow-record {input.mlflow:q} --rule base_group_spreads --run-id-file {output.run_id:q} "
        )


rule base_model_card:
    """The base model's card: its test scores (from its evaluation) and its SDE group spread under
    the training sampler."""
    input:
        unpack(card_eval_inputs),
        spreads=SPREADS,
        code=stage_sources("base_model_card"),
        mlflow=MLFLOW_RECORD,
    output:
        card=f"{BASE_DIR}/card/README.md",
        figures=f"{BASE_DIR}/card/figures.json",
        grid=f"{BASE_DIR}/card/samples.png",
        run_id=f"{BASE_DIR}/card/mlflow_run_id.txt",
    log:
        f"{RESULTS}/logs/base_model_card.log",
    benchmark:
        f"{RESULTS}/benchmarks/base_model_card.tsv"
    conda:
        "../envs/pipeline.yaml"
    threads: 1
    params:
        cfg=config_json("base_model_card"),
        out_dir=output_dir,
        vocab=vocab_flag,
    shell:
        keep_failed_log(
            "python -u -m pipeline.stages.base_model_card --train-info {input.info:q} --test {input.test:q} "
            "--samples {input.samples:q} --rewards {input.rewards:q} --spreads {input.spreads:q} {params.vocab} "
            "--config-json {params.cfg:q} --out-dir {params.out_dir:q} "
            "--mlflow-record {input.mlflow:q} --rule base_model_card "
            "--run-id-file {output.run_id:q}"
        )
