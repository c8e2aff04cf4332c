"""Training, checkpoints and generation for impl_torch models: `lmref train`, `lmref generate`.

    train.session.train(flags, sizes, Options(...))     the whole of `lmref train` (returns a summary)
    train.loop.build_trainer / train_step / evaluate    the step the CLI and the benchmark time
    train.checkpoint.save / load / load_model           atomic, sha256-checked training checkpoints
    train.generate.generate(model, prompt_ids, n, ...)  KV-cache decoding: greedy, temperature, top-k, top-p
    train.data, train.tokenizer                         corpus, split, batches; byte and BPE tokenizers
    train.distributed                                   torchrun, DDP / FSDP, collectives
    train.multimodal, train.stages, train.captions      a vision run: LLaVA's two stages and a text-only baseline
    train.shapes, train.images                          the embedded image-caption set; PNG files in and out

Submodules are imported on use, so `lmref --help` does not load torch.
"""
