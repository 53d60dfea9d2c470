"""SPARK judge probe: tiny from-scratch char-level Llama that learns to SOLVE and JUDGE
(pointwise Yes/No, pairwise A/B) two-digit addition on one CPU thread.

Usage: .venv/bin/python research/judge_probe.py [--fmt digit] [--minutes 10] ...
Prints metrics at the end (solve / pointwise / pairwise greedy accuracy, verdict shares).
"""
import argparse, math, random, time, re, json
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

def main(argv=None):
    torch.set_num_threads(1)  # one CPU thread, as measured (set here, not at import)
    p = argparse.ArgumentParser()
    p.add_argument("--fmt", default="digit", choices=["direct", "sumfirst", "vs", "digit"])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--ffn", type=int, default=384)
    p.add_argument("--bs", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--wd", type=float, default=0.1)
    p.add_argument("--mix", default="0.3,0.35,0.35,0.0", help="solve,pointwise,pairwise,reflect shares")
    p.add_argument("--n_eval", type=int, default=200, help="per kind")
    p.add_argument("--n_test_q", type=int, default=400, help="held-out (a,b) questions")
    p.add_argument("--max_steps", type=int, default=10**9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--range", default="small", choices=["small", "full"],
                   help="small: a,b>=10, a+b<=99 (all 2-digit); full: a,b in 10..99 (sums up to 198)")
    p.add_argument("--sanity", action="store_true", help="print masking/per-position loss checks")
    p.add_argument("--log_every", type=int, default=50)
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    random.seed(args.seed); torch.manual_seed(args.seed)

    # ---------------- tokenizer: printable ASCII chars + specials ----------------
    SPECIALS = ["<pad>", "<|user|>", "<|assistant|>", "<eos>"]
    CHARS = [chr(i) for i in range(32, 127)]
    itos = SPECIALS + CHARS
    stoi = {s: i for i, s in enumerate(itos)}
    PAD, USER, ASST, EOS = 0, 1, 2, 3
    def enc(s): return [stoi[c] for c in s]
    def dec(ids): return "".join(itos[i] for i in ids if i >= len(SPECIALS))
    def prompt_ids(q): return [USER] + enc(q) + [ASST]

    # ---------------- data: a+b, a,b>=10, sum<=99 (always two-digit everything) ----------------
    if args.range == "small":
        ALL = [(a, b) for a in range(10, 90) for b in range(10, 90) if a + b <= 99]
        LO, HI, W = 10, 99, 2
    else:
        ALL = [(a, b) for a in range(10, 100) for b in range(10, 100)]
        LO, HI, W = 10, 198, 3
    rng = random.Random(1234)
    rng.shuffle(ALL)
    TEST_Q, TRAIN_Q = ALL[:args.n_test_q], ALL[args.n_test_q:]

    def wrong(s, r):
        while True:
            k = r.random()
            if k < 0.35: c = s + r.choice([-3, -2, -1, 1, 2, 3])           # units near miss
            elif k < 0.6: c = s + r.choice([-20, -10, 10, 20])            # tens near miss
            elif k < 0.75: c = int(str(s)[::-1]) if s % 10 else s + 1     # digit swap
            elif k < 0.85: c = s + r.choice([-11, 11, -9, 9])            # both digits
            else: c = r.randint(LO, HI)
            if LO <= c <= HI and c != s: return c

    def cmp_digits(x, y):  # "4=4 6#7" (zero-padded to W digits so digits align)
        x, y = str(x).zfill(W), str(y).zfill(W)
        return " ".join(f"{u}={v}" if u == v else f"{u}#{v}" for u, v in zip(str(x), str(y)))

    def ex_solve(a, b, r):
        s = a + b
        return f"What is {a}+{b}?", f"{a}+{b}={s}. \\boxed{{{s}}}", None

    def ex_point(a, b, r, label=None):
        s = a + b
        ok = r.random() < 0.5 if label is None else label
        c = s if ok else wrong(s, r)
        q = f"Is {a}+{b}={c} correct?"
        v = "Yes" if ok else "No"
        f = args.fmt
        if f == "direct": resp = f"\\boxed{{{v}}}"
        elif f == "sumfirst": resp = f"{a}+{b}={s}. \\boxed{{{v}}}"
        elif f == "vs": resp = f"{a}+{b}={s}. {s} vs {c}. \\boxed{{{v}}}"
        else: resp = f"{a}+{b}={s}. {s} vs {c}: {cmp_digits(s, c)}. \\boxed{{{v}}}"
        return q, resp, v

    def ex_pair(a, b, r, label=None):
        s = a + b
        w = wrong(s, r)
        v = (r.choice("AB") if label is None else label)
        A, B = (s, w) if v == "A" else (w, s)
        q = f"{a}+{b}=? A: {A} B: {B}. Which is correct?"
        f = args.fmt
        if f == "direct": resp = f"\\boxed{{{v}}}"
        elif f == "sumfirst": resp = f"{a}+{b}={s}. \\boxed{{{v}}}"
        elif f == "vs":
            resp = f"{a}+{b}={s}. A {A}: {'Y' if A == s else 'N'}. B {B}: {'Y' if B == s else 'N'}. \\boxed{{{v}}}"
        else:
            resp = (f"{a}+{b}={s}. A {A}: {cmp_digits(s, A)} {'Y' if A == s else 'N'}. "
                    f"B {B}: {cmp_digits(s, B)} {'Y' if B == s else 'N'}. \\boxed{{{v}}}")
        return q, resp, v

    def ex_reflect(a, b, r):
        s = a + b; c = wrong(s, r)
        return f"Someone said {a}+{b}={c}. Fix it.", f"{a}+{b}={s}. \\boxed{{{s}}}", None

    KINDS = [ex_solve, ex_point, ex_pair, ex_reflect]
    MIX = [float(x) for x in args.mix.split(",")]

    def make_seq(q, resp):
        pi = prompt_ids(q); ri = enc(resp) + [EOS]
        ids = pi + ri
        labels = [-100] * len(pi) + ri           # loss only on response (+eos); model shifts internally
        return ids, labels

    def batch(r, bs):
        seqs, vpos = [], []
        for _ in range(bs):
            k = r.choices(range(4), weights=MIX)[0]
            a, b = r.choice(TRAIN_Q)
            q, resp, v = KINDS[k](a, b, r)
            ids, lab = make_seq(q, resp)
            # index (in ids) of the verdict char, i.e. the first char inside the LAST \boxed{
            vp = len(prompt_ids(q)) + resp.rindex("\\boxed{") + 7 if v else -1
            seqs.append((ids, lab, k)); vpos.append(vp)
        L = max(len(s[0]) for s in seqs)
        X = torch.full((bs, L), PAD); Y = torch.full((bs, L), -100); M = torch.zeros((bs, L), dtype=torch.long)
        for i, (ids, lab, _) in enumerate(seqs):   # RIGHT padding: positions 0..n-1 identical to eval
            X[i, :len(ids)] = torch.tensor(ids); Y[i, :len(lab)] = torch.tensor(lab); M[i, :len(ids)] = 1
        return X, Y, M, torch.tensor(vpos), torch.tensor([s[2] for s in seqs])

    cfg = LlamaConfig(vocab_size=len(itos), hidden_size=args.hidden, intermediate_size=args.ffn,
                      num_hidden_layers=args.layers, num_attention_heads=args.heads,
                      num_key_value_heads=args.heads, max_position_embeddings=256,
                      bos_token_id=USER, eos_token_id=EOS, pad_token_id=PAD, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    nparams = sum(p.numel() for p in model.parameters())
    print(f"fmt={args.fmt} params={nparams/1e6:.3f}M vocab={len(itos)} train_q={len(TRAIN_Q)} test_q={len(TEST_Q)}", flush=True)
    for k in range(3):
        q, resp, _ = KINDS[k](*TRAIN_Q[k], random.Random(k))
        print("  EXAMPLE:", repr(f"<|user|>{q}<|assistant|>{resp}<eos>"))

    def per_token_loss(X, Y, M):
        logits = model(input_ids=X, attention_mask=M).logits
        # explicit shift: logits at t predict token t+1
        lt = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), Y[:, 1:].reshape(-1),
                             ignore_index=-100, reduction="none").view(X.size(0), -1)
        return logits, lt

    if args.sanity:
        r = random.Random(5)
        X, Y, M, VP, K = batch(r, 4)
        out = model(input_ids=X, attention_mask=M, labels=Y)
        logits, lt = per_token_loss(X, Y, M)
        mine = lt.sum() / (Y[:, 1:] != -100).sum()
        print(f"SANITY HF loss={out.loss.item():.4f} manual shifted loss={mine.item():.4f} (must match)")
        for i in range(4):
            ids = X[i].tolist(); n = int(M[i].sum())
            sup = "".join("^" if Y[i, t] != -100 else "." for t in range(n))
            print("  seq :", "".join(itos[j] if j >= 4 else "@" for j in ids[:n]))
            print("  loss:", sup, " verdict pos", VP[i].item(), repr(itos[ids[VP[i]]]) if VP[i] >= 0 else "")

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.wd, betas=(0.9, 0.98))
    budget = args.minutes * 60
    r = random.Random(args.seed + 99)
    t0 = time.time(); step = 0; hist = []
    model.train()
    while True:
        el = time.time() - t0
        if el > budget or step >= args.max_steps: break
        frac = el / budget
        lr = args.lr * (frac / 0.05 if frac < 0.05 else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (frac - 0.05) / 0.95)))
        for g in opt.param_groups: g["lr"] = lr
        X, Y, M, VP, K = batch(r, args.bs)
        logits, lt = per_token_loss(X, Y, M)
        ntok = (Y[:, 1:] != -100).sum()
        loss = lt.sum() / ntok
        opt.zero_grad(set_to_none=True); loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0); opt.step()
        step += 1
        with torch.no_grad():   # verdict-token diagnostics (teacher forced)
            js = (VP >= 0).nonzero().flatten()
            if len(js):
                vl = lt[js, VP[js] - 1]
                pred = logits[js, VP[js] - 1].argmax(-1); tgt = X[js, VP[js]]
                hist.append((loss.item(), vl.mean().item(), (pred == tgt).float().mean().item()))
        if step % args.log_every == 0:
            h = hist[-args.log_every:]
            print(f"step {step} t={el:.0f}s lr={lr:.2e} loss={sum(x[0] for x in h)/len(h):.4f} "
                  f"verdict_loss={sum(x[1] for x in h)/len(h):.4f} verdict_tf_acc={sum(x[2] for x in h)/len(h):.3f}", flush=True)
    train_time = time.time() - t0

    # ---------------- eval: greedy, held-out questions, parse last \boxed{} ----------------
    model.eval()
    @torch.no_grad()
    def greedy(prompts, max_new=80):
        outs = [None] * len(prompts)
        groups = {}
        for i, pr in enumerate(prompts): groups.setdefault(len(pr), []).append(i)  # same length -> no padding
        for L, idx in groups.items():
            for j in range(0, len(idx), 128):
                sub = idx[j:j + 128]
                x = torch.tensor([prompts[i] for i in sub])
                g = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=max_new,
                                   do_sample=False, eos_token_id=EOS, pad_token_id=PAD)
                for i, row in zip(sub, g[:, L:].tolist()):
                    if EOS in row: row = row[:row.index(EOS)]
                    outs[i] = dec(row)
        return outs

    def last_boxed(s):
        m = re.findall(r"\\boxed\{([^{}]*)\}", s)
        return m[-1] if m else None

    er = random.Random(777)
    res = {}
    te = [TEST_Q[i % len(TEST_Q)] for i in range(args.n_eval)]
    # solve
    items = [ex_solve(a, b, er) for a, b in te]
    outs = greedy([prompt_ids(q) for q, _, _ in items])
    res["solve_acc"] = sum(last_boxed(o) == str(a + b) for o, (a, b) in zip(outs, te)) / len(te)
    sample = {"solve": outs[:2]}
    # pointwise (balanced)
    items = [ex_point(a, b, er, label=(i % 2 == 0)) for i, (a, b) in enumerate(te)]
    outs = greedy([prompt_ids(q) for q, _, _ in items])
    pv = [last_boxed(o) for o in outs]
    res["point_acc"] = sum(p_ == v for p_, (_, _, v) in zip(pv, items)) / len(items)
    res["point_yes_share"] = sum(p_ == "Yes" for p_ in pv) / len(pv)
    res["point_no_share"] = sum(p_ == "No" for p_ in pv) / len(pv)
    res["point_trace_sum_ok"] = sum(o.startswith(f"{a}+{b}={a+b}.") for o, (a, b) in zip(outs, te)) / len(te)
    sample["point"] = outs[:2]
    # pairwise (balanced)
    items = [ex_pair(a, b, er, label="AB"[i % 2]) for i, (a, b) in enumerate(te)]
    outs = greedy([prompt_ids(q) for q, _, _ in items])
    pv = [last_boxed(o) for o in outs]
    res["pair_acc"] = sum(p_ == v for p_, (_, _, v) in zip(pv, items)) / len(items)
    res["pair_A_share"] = sum(p_ == "A" for p_ in pv) / len(pv)
    res["pair_B_share"] = sum(p_ == "B" for p_ in pv) / len(pv)
    sample["pair"] = outs[:2]
    res["judge_acc_balanced"] = (res["point_acc"] + res["pair_acc"]) / 2
    res.update(fmt=args.fmt, params=nparams, steps=step, train_min=round(train_time / 60, 2),
               hidden=args.hidden, layers=args.layers, bs=args.bs, lr=args.lr, mix=args.mix)
    for k, v in sample.items(): print("  SAMPLE", k, [s for s in v])
    print("METRICS", json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in res.items()}))
    if args.out:
        with open(args.out, "a") as f: f.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
