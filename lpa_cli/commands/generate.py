"""`lpa generate`: decode text with a language model, in full, with early exit, or self-speculatively."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from rich.markup import escape

from lpa_core.files import readable
from lpa_core.text import inert
from lpa_cli.commands.options import Device, Factory, Json, Quiet, Seed, TrustFactory, Verify
from lpa_cli.commands.render import consoles, print_json, progress_lines


def generate_command(
    checkpoint: Annotated[Path, typer.Argument(help="An lpa checkpoint of a language model (byte GPT or decoder).")],
    prompt: Annotated[Optional[str], typer.Option("--prompt", help="The text to continue.")] = None,
    prompt_file: Annotated[Optional[Path], typer.Option("--prompt-file", help="Read the prompt from this UTF-8 file.")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Tokens to generate.")] = 64,
    strategy: Annotated[str, typer.Option("--strategy", help="full, exit (leave at the first confident depth) or self-speculative.")] = "full",
    threshold: Annotated[float, typer.Option("--threshold", help="exit: the next-token probability at which a token leaves.")] = 0.9,
    exit_depth: Annotated[int, typer.Option("--exit-depth", help="exit: the shallowest depth a token may leave at.")] = 1,
    draft_depth: Annotated[Optional[int], typer.Option("--draft-depth", help="self-speculative: blocks that draft, 1..N-1 "
                                                       "(default: half the blocks).", show_default=False)] = None,
    speculate: Annotated[int, typer.Option("--speculate", help="self-speculative: tokens drafted per round.")] = 4,
    temperature: Annotated[float, typer.Option("--temperature", help="0: greedy; above 0: sampling.")] = 0.0,
    top_k: Annotated[int, typer.Option("--top-k", help="Sample from the k most likely tokens (0: all).")] = 0,
    repeats: Annotated[int, typer.Option("--repeats", help="Time the decoding this many times after one warm-up run and "
                                         "report the median tokens/s and the range (1: a single run, no warm-up).")] = 3,
    baseline: Annotated[bool, typer.Option("--baseline/--no-baseline", help="exit and self-speculative: also time full decoding "
                                           "of the same prompt the same way, and print the speed-up.")] = True,
    seed: Seed = None,
    device: Device = None,
    verify: Verify = True,
    factory: Factory = None,
    trust_factory: TrustFactory = False,
    json_: Json = False,
    quiet: Quiet = False,
) -> None:
    """Continue a prompt with a KV cache; print the text, tokens/s, acceptance rate, average exit depth.

    Under greedy decoding, self-speculative output is the full model's, token for token.
    """
    from lpa_core.errors import UsageError
    from lpa_cli.serving.generate import generate_checkpoint

    if (prompt is None) == (prompt_file is None):
        raise UsageError("give the prompt with --prompt TEXT or --prompt-file FILE (one of them)")
    if prompt_file is not None:
        try:
            prompt = readable(prompt_file, "text", missing_ok=False).read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise UsageError(f"{prompt_file}: the prompt is not UTF-8 text (byte {err.start})") from None
        except OSError as err:
            raise UsageError(f"{prompt_file}: cannot read the prompt ({err.strerror or err})") from None
    out, err = consoles(quiet)
    report = None if err.is_terminal or json_ else progress_lines(err, "generated", "tokens")  # plain lines where stderr is a log

    g = generate_checkpoint(checkpoint, prompt, verify=verify, device=device or "cpu", factory=factory or "", trust_factory=trust_factory,
                            max_new_tokens=max_new_tokens, strategy=strategy,
                            threshold=threshold, min_exit_depth=exit_depth, draft_depth=draft_depth or 0, speculate=speculate,
                            temperature=temperature, top_k=top_k, seed=seed or 0, progress=report,
                            repeats=repeats, baseline=baseline)
    if json_:
        print_json({"text": g.text, "tokens": g.tokens, "prompt_tokens": g.prompt_tokens, "strategy": g.strategy, "seconds": g.seconds,
                    "prefill_seconds": g.prefill_seconds, "tokens_per_s": g.tokens_per_s,
                    "tokens_per_s_range": g.tokens_per_s_range, "repeats": g.repeats, "acceptance_rate": g.acceptance_rate,
                    "mean_exit_depth": g.mean_exit_depth, "stopped": g.stopped, "exit_depths": g.depths,
                    "full_tokens_per_s": None if g.full is None else g.full.tokens_per_s, "speedup": g.speedup,
                    "same_as_full": g.same_as_full})
        return
    out.print(escape(inert(prompt + g.text, lines=True)), soft_wrap=True)  # a model's text spans lines; its other controls stay inert
    spread = f" (median of {g.repeats} after a warm-up, {g.tokens_per_s_range[0]:,.0f}-{g.tokens_per_s_range[1]:,.0f})" \
        if g.repeats > 1 else ""
    parts = [f"{len(g.tokens)} tokens, {g.tokens_per_s:,.1f} tokens/s{spread} ({g.strategy})"]
    if g.acceptance_rate is not None:
        parts.append(f"acceptance rate {g.acceptance_rate:.1%} over {g.rounds} rounds")
    if g.mean_exit_depth is not None:
        parts.append(f"average exit depth {g.mean_exit_depth:.2f}")
    if g.full is not None:
        parts.append(f"full decoding {g.full.tokens_per_s:,.1f} tokens/s, timed the same way: {g.speedup:.2f}x, "
                     f"{'the same' if g.same_as_full else 'not the same'} text")
    if g.stopped == "context":
        parts.append(f"stopped at the model's context of {g.prompt_tokens + len(g.tokens)} positions: {len(g.tokens)} of the "
                     f"{max_new_tokens} new tokens asked for")
    err.print("; ".join(parts))
