"""Masked-LM distillation (DistilBERT from BERT): a BERT teacher on Ray Serve, a shallower BERT student.

    raykd mlm-distill --config jobs/configs/mlm.yaml [key=value ...]

The seed's pre-training distillation for encoders: the student imitates the teacher's masked-LM outputs.
  * Teacher: `teacher.path` (an HF BertForMaskedLM directory) or, when null, a tiny one built offline
    and cached: a WordPiece tokenizer and a BertForMaskedLM trained on raykd's generated corpus with the
    masking below (`build_tiny_bert`).
  * Masking as DistilBERT/BERT (`distilbert_mask`): 15 % of the non-special tokens of every sequence are
    selected (at least one); of those 80 % become [MASK], 10 % a random token, 10 % stay unchanged.
  * Rows are the selected positions: the teacher deployment (hf backend, the same `Teacher.score` as for
    causal teachers) returns top-k log-probs at those positions, `positions`/`labels` given per sequence.
  * Same losses as `raykd distill`: alpha * T^2 D(p_t, p_s) + (1 - alpha) CE(labels) with the
    configured divergence, top-k tail handling, temperature/alpha schedules and dynamic temperature
    (raykd/loss/row_loss.py, the row-level loss `raykd distill` uses); hidden/attention/adversarial terms
    are not wired for MLM and are rejected by the config (raykd/config/mlm.py).
  * The student is the teacher's architecture with fewer layers, initialised from the teacher's layers
    picked by `student.layer_selection` (embeddings and MLM head copied), as DistilBERT did.

Training runs in the driver (a BERT student this small does not need data parallelism), with the teacher
request for the next batch in flight while the current step runs. Everything is logged to one MLflow run,
and the evaluation compares teacher, distilled student and (optionally) a hard-label-only student with the
same budget on held-out masked-LM loss and top-1 agreement with the teacher.

Owns: the masking and blocks (masking.py), the tiny BERT teacher and the derived student (models.py), the
training loop and evaluation (train.py), the job (run.py). May import: raykd.loss, raykd.config, raykd.data,
raykd.models, raykd.teacher (the deployment), raykd.tracking, raykd.cluster, raykd.files, raykd.console,
raykd.preflight.
"""
