rule generate_prompts:
    """The project's own OCR-style prompts (default study): train and test prompt files."""
    input:
        spec="datasets/sources/ocr_scenes.yaml",
        code=stage_sources("generate_prompts"),
        mlflow=MLFLOW_RECORD,
    output:
        train=f"{DATASET_DIR}/sources/train.txt",
        test=f"{DATASET_DIR}/sources/test.txt",
        vocab=f"{DATASET_DIR}/sources/vocab.json",
        run_id=f"{DATASET_DIR}/sources/mlflow_run_id.txt",
    log:
        f"{RESULTS}/logs/generate_prompts.log",
    conda:
        "../envs/pipeline.yaml"
    params:
        cfg=config_json("generate_prompts"),
    shell:
        keep_failed_log(
            "python -u -m pipeline.stages.generate_prompts --spec {input.spec:q} --config-json {params.cfg:q} "
            "--train {output.train:q} --test {output.test:q} --vocab {output.vocab:q} "
            "--mlflow-record {input.mlflow:q} --rule generate_prompts --run-id-file {output.run_id:q} "
        )


if CFG.dataset.source.kind == "captions":

    rule curate_captions:
        """Caption prompts (PickScore-25k) of one split: normalise, drop empty/short/repeated."""
        input:
            source=prompt_source,
            code=stage_sources("curate_captions"),
            mlflow=MLFLOW_RECORD,
        output:
            table=f"{DATASET_DIR}/{{split}}.parquet",
            stats=f"{DATASET_DIR}/{{split}}_stats.json",
            run_id=f"{DATASET_DIR}/{{split}}_mlflow_run_id.txt",
        log:
            f"{RESULTS}/logs/curate_captions_{{split}}.log",
        conda:
            "../envs/pipeline.yaml"
        params:
            cfg=config_json("curate_captions"),
            min_words=CFG.dataset.curation.min_words,
            lines=line_range_flag,
            wildcards=wildcards_json,
        shell:
            keep_failed_log(
                "python -u -m pipeline.stages.curate_captions --source {input.source:q} --out {output.table:q} "
                "--min-words {params.min_words:q} {params.lines} --stats {output.stats:q} "
                "--mlflow-record {input.mlflow:q} --rule curate_captions "
                "--wildcards {params.wildcards:q} --run-id-file {output.run_id:q}"
            )

else:

    rule curate_dataset:
        """OCR-Color-10 curation of one split: keep, augment with a colour sentence, or drop."""
        input:
            source=prompt_source,
            code=stage_sources("curate_dataset"),
            mlflow=MLFLOW_RECORD,
        output:
            table=f"{DATASET_DIR}/{{split}}.parquet",
            stats=f"{DATASET_DIR}/{{split}}_stats.json",
            run_id=f"{DATASET_DIR}/{{split}}_mlflow_run_id.txt",
        log:
            f"{RESULTS}/logs/curate_dataset_{{split}}.log",
        conda:
            "../envs/pipeline.yaml"
        params:
            cfg=config_json("curate_dataset"),
            seed=CFG.dataset.curation.seed,
            lines=line_range_flag,
            wildcards=wildcards_json,
        shell:
            keep_failed_log(
                "python -u -m pipeline.stages.curate_dataset --source {input.source:q} --out {output.table:q} "
                "--seed {params.seed:q} {params.lines} --stats {output.stats:q} "
                "--mlflow-record {input.mlflow:q} --rule curate_dataset --wildcards {params.wildcards:q} "
                "--run-id-file {output.run_id:q}"
            )


rule dataset_card:
    """The curated dataset's card: counts by colour, source, split and drop reason."""
    input:
        unpack(card_inputs),
        code=stage_sources("dataset_card"),
        mlflow=MLFLOW_RECORD,
    output:
        card=f"{DATASET_DIR}/README.md",
        run_id=f"{DATASET_DIR}/card_mlflow_run_id.txt",
    log:
        f"{RESULTS}/logs/dataset_card.log",
    conda:
        "../envs/pipeline.yaml"
    params:
        name=CFG.dataset.name,
        flags=card_flags,
    shell:
        keep_failed_log(
            "python -u -m pipeline.stages.dataset_card --name {params.name:q} "
            "--stats train={input.train:q} --stats test={input.test:q} {params.flags} "
            "--out {output.card:q} --mlflow-record {input.mlflow:q} --rule dataset_card "
            "--run-id-file {output.run_id:q}"
        )
