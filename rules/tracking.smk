rule mlflow_init:
    """Create the tracking database and the study's experiment before any parallel job."""
    input:
        code=stage_sources("mlflow_init"),
    output:
        record=MLFLOW_RECORD,
    log:
        f"{RESULTS}/logs/mlflow_init.log",
    conda:
        "../envs/pipeline.yaml"
    params:
        cfg=config_json("mlflow_init"),
        uri=CFG.mlflow.tracking_uri,
        experiment=CFG.mlflow.experiment,
        artifact_root=CFG.mlflow.artifact_root,
    shell:
        keep_failed_log(
            "python -u -m pipeline.stages.mlflow_init --tracking-uri {params.uri:q} "
            "--experiment {params.experiment:q} --artifact-root {params.artifact_root:q} "
            "--out {output.record:q}"
        )
