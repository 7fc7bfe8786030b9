"""Why a from-scratch KD student of the quickstart does not learn the task suite (EM 0.000 vs 0.995 hard labels),
and which setting makes it learn: the signal check at task positions, then loss ablations of the student's run.

    python benchmarks/kd_task_regime.py --teacher DIR check                 # no training: signals at task rows
    python benchmarks/kd_task_regime.py --teacher DIR run kd hard "task KD, general CE" --seeds 0
    python benchmarks/kd_task_regime.py --render                            # rewrite the .md from the .json

DIR is the quickstart's offline teacher (`$RAYKD_CACHE/teachers/tiny-<fp>`, built by `raykd distill --config
jobs/configs/quickstart.yaml`). Everything runs in one process, without Ray, on the quickstart's data exactly as
`raykd distill` packs it (its first 100 blocks of 128 tokens: the training blocks) and the teacher's top-20
signals as raykd computes them (HF backend, through the packed wire format). `check` compares, at the rows whose
label lies in a task line (`\\n99999999-00004719=99995280\\n`: prompt, answer digits, end marker), the teacher's
top-1 with the block's next token, the loss mask, and the mass the bucket KD target (raykd/loss/distributions.py)
puts on that token.

`run` trains the quickstart's student (raykd.models.build_student, `student.init_from_teacher=false`: 2 x 64,
random init) as `raykd distill` does — AdamW lr 3e-3, raykd's LR schedule (15 warm-up steps), clip 1.0, global
batch 32, 150 steps, T = 1, top-20 + tail bucket — but with a per-row loss
`a_kd(row) * KL_bucket(row) + a_ce(row) * CE(row)` (mean over rows), where a row is "task" when its label lies
in a task line and "general" otherwise, so the KD and CE weights can differ between the two. Per variant: task
exact match (raykd's scorer, 50 test prompts per level, L1 has 34), a teacher-forced probe (answer tokens'
argmax accuracy on ~100 test lines), final training CE on task/general rows, and an induction check (loss on the
second copy of a repeated random sequence). Results: benchmarks/results/kd_task_regime.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import describe, describe_line, loadavg, write_results  # noqa: E402

NAME = "kd_task_regime"
# name -> (a_kd, a_ce) on task rows, (a_kd, a_ce) on general rows, other settings
VARIANTS: dict[str, dict] = {
    "kd": dict(alpha=0.9),
    "hard": dict(alpha=0.0),
    "task CE, general KD": dict(alpha=0.9, kd_task=0.0, ce_task=1.0),
    "task KD, general CE": dict(alpha=0.9, kd_task=1.0, ce_task=0.0, kd_gen=0.0, ce_gen=1.0),
    "task KD only": dict(alpha=0.9, kd_task=1.0, ce_task=0.0, kd_gen=0.0, ce_gen=0.0),
    "task CE only": dict(alpha=0.9, kd_task=0.0, ce_task=1.0, kd_gen=0.0, ce_gen=0.0),
    "hard, labels sampled from the teacher": dict(alpha=0.0, sampled_labels=True),
    "alpha 0.7": dict(alpha=0.7),
    "alpha 0.5": dict(alpha=0.5),
    "alpha 0.2": dict(alpha=0.2),
    "kd, 450 steps": dict(alpha=0.9, steps=450),
    "kd, alpha warm-up 0 -> 0.9 over 100 steps": dict(alpha=0.9, alpha_warm=100),
    "kd, lr 1e-2": dict(alpha=0.9, lr=1e-2),
    "hard, lr 1e-2": dict(alpha=0.0, lr=1e-2),
    "kd, 600 steps": dict(alpha=0.9, steps=600),
    "kd, 400 training blocks (data.max_sequences=400)": dict(alpha=0.9, blocks=400),
}
TASK_LINE = re.compile(r"\n(\d{8})-(\d{8})=(\d+)\n")


def load_setup(teacher: str, top_k: int = 20, n_blocks: int | None = None):
    """(cfg, tokenizer, ids (n, 128) (n: data.max_sequences), row kind (n, 127): 0 general, 1 prompt, 2 answer digit, 3 end marker,
    mask, TeacherSignals of those blocks after a pack/unpack round trip)."""
    from transformers import AutoTokenizer

    from raykd.config import DistillConfig
    from raykd.config.base import load_config
    from raykd.data.blocks import pack_in_process
    from raykd.data.ingest import pad_id
    from raykd.data.records import RecordEncoder
    from raykd.data.sources import plan_chunks
    from raykd.signals.format import from_ipc, pack, to_ipc, unpack
    from raykd.teacher.hf_backend import HFTeacherBackend

    cfg = load_config(DistillConfig, "jobs/configs/quickstart.yaml",
                      [f"teacher.path={teacher}", "student.init_from_teacher=false"])
    tok = AutoTokenizer.from_pretrained(teacher)
    blocks, _ = pack_in_process(cfg.data, RecordEncoder(tok, cfg.data, None), pad_id(tok), plan_chunks(cfg.data))
    n = n_blocks or cfg.data.max_sequences  # the training blocks are the first max_sequences (raykd/data/ingest.py)
    ids, mask = blocks.ids[:n].astype(np.int64), blocks.mask[:n]
    backend = HFTeacherBackend(teacher)
    sig = backend.score(list(ids), top_k)
    sig = unpack(from_ipc(to_ipc(pack(sig, vocab_size=backend.vocab_size, teacher_fingerprint="check"))))
    kind = np.zeros(ids.shape, np.int8)
    for b, row in enumerate(ids):
        text, spans = "", []
        for t in row:
            piece = tok.decode([int(t)])
            spans.append((len(text), len(text) + len(piece)))
            text += piece
        for m in TASK_LINE.finditer(text):
            for j, (s, e) in enumerate(spans):
                if s >= m.start(1) - 1 and e <= m.end(2) + 1:
                    kind[b, j] = 1
                if s >= m.start(3) and e <= m.end(3):
                    kind[b, j] = 2
                if s == m.end(3) and e == m.end(3) + 1 and kind[b, j] == 0:
                    kind[b, j] = 3
    return cfg, tok, ids, kind[:, 1:], mask, sig


KINDS = ((0, "general"), (1, "task prompt"), (2, "answer digits"), (3, "answer end marker"))


def check(teacher: str) -> dict:
    import torch

    from raykd.loss.distributions import log_distributions

    cfg, tok, ids, kind, mask, sig = load_setup(teacher)
    cfg_top_k = 20
    B, L = ids.shape
    nxt, top1 = ids[:, 1:], sig.topk_ids[:, 0].reshape(B, L - 1)
    labels = torch.as_tensor(nxt.reshape(-1))
    t_logp, _ = log_distributions(torch.zeros(B * (L - 1), len(tok)), topk_ids=torch.as_tensor(sig.topk_ids),
                                  topk_logprobs=torch.as_tensor(sig.topk_logprobs),
                                  tail_logprob=torch.as_tensor(sig.tail_logprob), temperature=1.0, tail="bucket")
    hit = torch.as_tensor(sig.topk_ids).long() == labels[:, None]
    on_label = (t_logp[:, :-1].exp() * hit).sum(-1).reshape(B, L - 1).numpy()
    rows = {}
    for k, name in KINDS:
        sel = kind == k
        rows[name] = dict(rows=int(sel.sum()), top1_is_next=float(np.mean(top1[sel] == nxt[sel])),
                          kd_target_mass_on_next=float(on_label[sel].mean()),
                          tail_mass=float(np.exp(sig.tail_logprob.reshape(B, L - 1)[sel]).mean()),
                          mask=float(mask[:, 1:][sel].mean()), top_k=cfg_top_k)
    return rows


def train(teacher: str, variant: str, seed: int, per_level: int = 50) -> dict:
    import torch

    from raykd.data.task_suite import TaskSuite, score_model
    from raykd.loss.distributions import log_distributions
    from raykd.loss.divergences import divergence_rows
    from raykd.loss.schedules import lr_lambda
    from raykd.models import build_student

    v = {"steps": 150, "lr": 3e-3, "alpha_warm": 0, "sampled_labels": False, "blocks": 100, **VARIANTS[variant]}
    alpha = v["alpha"]
    kd_t, ce_t = v.get("kd_task", alpha), v.get("ce_task", 1 - alpha)
    kd_g, ce_g = v.get("kd_gen", alpha), v.get("ce_gen", 1 - alpha)
    torch.set_num_threads(1)
    cfg, tok, ids, kind, _, sig = load_setup(teacher, n_blocks=v["blocks"])
    B, L = ids.shape
    task = torch.as_tensor(kind > 0)
    TI = torch.as_tensor(sig.topk_ids).long().reshape(B, L - 1, -1)
    TL = torch.as_tensor(sig.topk_logprobs).reshape(B, L - 1, -1)
    TT = torch.as_tensor(sig.tail_logprob).reshape(B, L - 1)
    torch.manual_seed(seed)
    student, _ = build_student(teacher, cfg.student, seed=seed)
    opt = torch.optim.AdamW(student.parameters(), lr=v["lr"], weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.train.warmup_steps, v["steps"]))
    items = TaskSuite().test_items(per_level=per_level)
    rng, order, t0, last = np.random.default_rng(seed), [], time.time(), {}
    for step in range(v["steps"]):
        if len(order) < 32:  # an epoch: every block once, in a seeded order
            order += list(rng.permutation(B))
        bi, order = order[:32], order[32:]
        x = torch.as_tensor(ids[bi])
        logits = student(input_ids=x).logits[:, :-1].reshape(-1, student.config.vocab_size).float()
        lab, tk, n = x[:, 1:].reshape(-1), task[bi].reshape(-1), 32 * (L - 1)
        if v["sampled_labels"]:  # one-hot targets with the teacher's mean: drawn from its top-k, fresh each step
            pk = TL[bi].reshape(n, -1).exp()
            lab = TI[bi].reshape(n, -1).gather(-1, torch.multinomial(pk / pk.sum(-1, keepdim=True), 1))[:, 0]
        ce = torch.nn.functional.cross_entropy(logits, lab, reduction="none")
        t_logp, s_logp = log_distributions(logits, topk_ids=TI[bi].reshape(n, -1), topk_logprobs=TL[bi].reshape(n, -1),
                                           tail_logprob=TT[bi].reshape(-1), temperature=1.0, tail="bucket")
        kl = divergence_rows("forward_kl", t_logp, s_logp)
        if v["alpha_warm"]:  # loss.alpha_schedule {warmup_steps: W, warmup_from: 0}: alpha = 0.9 * step / W
            f = min(1.0, step / v["alpha_warm"])
            akd, ace = torch.where(tk, kd_t * f, kd_g * f), torch.where(tk, 1 - kd_t * f, 1 - kd_g * f)
        else:
            akd, ace = torch.where(tk, kd_t, kd_g), torch.where(tk, ce_t, ce_g)
        loss = (akd * kl + ace * ce).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        sched.step()
        last = dict(ce_task=float(ce[tk].mean()), ce_general=float(ce[~tk].mean()))
    score = score_model(student, tok, items)
    return dict(variant=variant, seed=seed, em=score.exact_match(), em_levels=[score.exact_match(lv) for lv in (1, 2, 3, 4)],
                probe_token_acc=probe(student, tok, items[:: max(1, len(items) // 100)]), **last,
                induction=induction(student, ids), seconds=round(time.time() - t0), load=loadavg(),
                date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))


def probe(student, tok, items) -> float:
    """Teacher-forced argmax accuracy of the answer tokens and end marker, each line given its bare prompt."""
    import torch

    accs = []
    student.eval()
    with torch.no_grad():
        for p in items:
            pr = tok.encode(p.prompt, add_special_tokens=False)
            full = torch.tensor([tok.encode(p.prompt + p.answer + "\n", add_special_tokens=False)])
            pred = student(input_ids=full).logits[0, :-1].argmax(-1)
            accs.append((pred[len(pr) - 1:] == full[0, len(pr):]).float().mean().item())
    student.train()
    return float(np.mean(accs))


def induction(student, ids) -> list[float]:
    """Mean loss on the first and on the second copy of 64 random 40-token sequences (1000 most frequent ids)."""
    import torch

    g = torch.Generator().manual_seed(1)
    pool = torch.as_tensor(np.argsort(-np.bincount(ids.reshape(-1), minlength=student.config.vocab_size))[:1000])
    seq = pool[torch.randint(0, 1000, (64, 40), generator=g)]
    x = torch.cat([seq, seq], 1)
    student.eval()
    with torch.no_grad():
        lp = torch.log_softmax(student(input_ids=x).logits[:, :-1].float(), -1).gather(-1, x[:, 1:, None])[..., 0]
    student.train()
    return [round(-lp[:, :39].mean().item(), 3), round(-lp[:, 40:].mean().item(), 3)]


def render(data: dict) -> str:
    out = [f"# {NAME}: a from-scratch KD student and the task suite", "",
           f"- machine: {data.get('machine', '?')}", "- command: `" + data.get("command", "?") + "`",
           "- what: benchmarks/kd_task_regime.py docstring; the quickstart's data, teacher and student shape, "
           "student from random init, 150 steps unless said", ""]
    chk = data.get("check")
    if chk:
        out += ["## Teacher signals at task rows (no training)", "",
                "| rows | n | teacher top-1 = next token | KD target mass on next token | tail mass | loss mask |",
                "|---|---|---|---|---|---|"]
        out += [f"| {k} | {r['rows']} | {r['top1_is_next']:.4f} | {r['kd_target_mass_on_next']:.4f} | "
                f"{r['tail_mass']:.1e} | {r['mask']:.3f} |" for k, r in chk.items()]
        out.append("")
    out += ["## Student runs", "",
            "| variant | seed | task EM | EM L1..L4 | answer tokens, teacher-forced acc | train CE task / general | "
            "induction loss 1st / 2nd copy | date, load |", "|---|---|---|---|---|---|---|---|"]
    for r in data.get("runs", []):
        ind = f"{r['induction'][0]:.2f} / {r['induction'][1]:.2f}" if r.get("induction") else "-"
        when = r["date"] + (f", {r['load'][0]}" if r.get("load") else "") + (" *" if r.get("scratch") else "")
        out.append(f"| {r['variant']} | {r['seed']} | {r['em']:.3f} | {' / '.join(f'{x:.2f}' for x in r['em_levels'])} | "
                   f"{r['probe_token_acc']:.3f} | {r['ce_task']:.3f} / {r['ce_general']:.3f} | {ind} | {when} |")
    if data.get("note"):
        out += ["", data["note"]]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", nargs="?", choices=["check", "run"], default=None)
    p.add_argument("variants", nargs="*", help=f"for run: any of {list(VARIANTS)} (default: all)")
    p.add_argument("--teacher", help="the quickstart's built teacher directory")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--render", action="store_true")
    a = p.parse_args(argv)
    path = Path(__file__).resolve().parent / "results" / f"{NAME}.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    if not a.render:
        if not a.teacher or not a.what:
            p.error("check/run need --teacher")
        data.update(machine=describe_line(describe()), command="python benchmarks/kd_task_regime.py " + " ".join(
            repr(x) if " " in x else x for x in (argv if argv is not None else sys.argv[1:])))
        if a.what == "check":
            data["check"] = check(a.teacher)
        else:
            for name in a.variants or list(VARIANTS):
                for seed in a.seeds:
                    data.setdefault("runs", []).append(train(a.teacher, name, seed))
                    write_results(NAME, None, data, render)
    write_results(NAME, None, data, render)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
