rule sample_eval:
    """Deterministic ODE samples of the test split for the base model or one trained run
    (model: base, or METHOD/seedN)."""
    input:
        unpack(eval_inputs),
        code=stage_sources("sample_eval"),
        mlflow=MLFLOW_RECORD,
    output:
        samples=f"{RESULTS}/eval/{{model}}/samples.parquet",
        images=directory(f"{RESULTS}/eval/{{model}}/images"),
        run_id=f"{RESULTS}/eval/{{model}}/samples_mlflow_run_id.txt",
    log:
        f"{RESULTS}/logs/sample_eval/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/sample_eval/{{model}}.tsv"
    conda:
        "../envs/pipeline.yaml"
    threads: 2
    resources:
        gpu=1,
    params:
        cfg=sample_eval_params,
        base_dir=base_model_dir(),
        weights=weights_flag,
        out_dir=output_dir,
        wildcards=wildcards_json,
    shell:
        keep_failed_log(
            GPU_SLOTS
            + "python -u -m pipeline.stages.sample_eval --model {wildcards.model:q} --base-model {params.base_dir:q} "
            "{params.weights} --test {input.test:q} --config-json {params.cfg:q} --out-dir {params.out_dir:q} "
            "--threads {threads} --mlflow-record {input.mlflow:q} --rule sample_eval "
            "--wildcards {params.wildcards:q} --run-id-file {output.run_id:q}"
        )


rule score:
    """Every evaluation image scored by every configured reward (long Parquet table)."""
    input:
        samples=f"{RESULTS}/eval/{{model}}/samples.parquet",
        code=stage_sources("score"),
        mlflow=MLFLOW_RECORD,
    output:
        rewards=f"{RESULTS}/eval/{{model}}/rewards.parquet",
        run_id=f"{RESULTS}/eval/{{model}}/rewards_mlflow_run_id.txt",
    log:
        f"{RESULTS}/logs/score/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/score/{{model}}.tsv"
    conda:
        "../envs/pipeline.yaml"
    threads: 2
    resources:
        gpu=SCORE_GPUS,
    params:
        names=",".join(CFG.rewards.score),
        settings=canonical_json(stage_json.score_params(CFG)["settings"]),
        strict="--strict" if CFG.evaluation.strict_images else "",
        wildcards=wildcards_json,
    shell:
        keep_failed_log(
            GPU_SLOTS
            + "python -u -m pipeline.stages.score --samples {input.samples:q} --out {output.rewards:q} "
            "--rewards {params.names:q} --settings-json {params.settings:q} --workers {threads} {params.strict} "
            "--mlflow-record {input.mlflow:q} --rule score --wildcards {params.wildcards:q} "
            "--run-id-file {output.run_id:q}"
        )


rule report:
    """The study report: tables, training curves, stability view and image grids."""
    input:
        unpack(report_inputs),
        code=stage_sources("report"),
        mlflow=MLFLOW_RECORD,
    output:
        html=report(
            f"{RESULTS}/report/index.html",
            caption="../report/index.rst",
            category="Report",
        ),
        summary=report(
            f"{RESULTS}/report/summary.csv",
            caption="../report/summary.rst",
            category="Report",
        ),
        summary_parquet=f"{RESULTS}/report/summary.parquet",
        stability=f"{RESULTS}/report/stability.csv",
        paired=f"{RESULTS}/report/paired.csv",
        runs=f"{RESULTS}/report/runs.csv",
        methods=f"{RESULTS}/report/methods.csv",
        tests=f"{RESULTS}/report/tests.csv",
        equal_nfe=f"{RESULTS}/report/equal_nfe.csv",
        equal_nfe_tests=f"{RESULTS}/report/equal_nfe_tests.csv",
        curves=directory(f"{RESULTS}/report/curves"),
        grid=report(
            f"{RESULTS}/report/grid.png",
            caption="../report/index.rst",
            category="Samples",
        ),
        run_id=f"{RESULTS}/report/mlflow_run_id.txt",
    log:
        f"{RESULTS}/logs/report.log",
    conda:
        "../envs/pipeline.yaml"
    params:
        cfg=config_json("report"),
        flags=report_flags,
        out_dir=output_dir,
    shell:
        keep_failed_log(
            "python -u -m pipeline.stages.report {params.flags} --config-json {params.cfg:q} "
            "--out-dir {params.out_dir:q} --mlflow-record {input.mlflow:q} --rule report "
            "--run-id-file {output.run_id:q}"
        )
