"""Part 3, capacity: K concurrent sessions, each in its own process, as in production.

Every session process (``python -m bench.capacity --child ours|stock|none``) holds one
in-process room: a participant whose 48 kHz microphone is fed speech in real time (a turn
every ``period`` seconds, otherwise the live source's silence) and whose 640x480 camera sends
15 frames per second, and one agent (``ours``: worker.session.build_session; ``stock``: the
stock VoicePipelineAgent; ``none``: no agent, to price the driver itself). The providers run
in a process of their own (remote in production). Processes are started once and prewarmed
like job processes (``harness.prewarmed_job_process``), then reused across runs.

For each K, K processes run a session for ``seconds`` at once (turns staggered). Reported per
K: CPU per session (process CPU time / wall, % of one core), RSS and USS per session, the
providers' CPU, the machine's CPU use (other work on the machine included), and real time:

- VAD lag: the Silero plugin's "inference is slower than realtime" warnings (0 allowed);
- playout gaps: silence > 150 ms inside a reply at the room's recorder (0 allowed);
- e2e: end of speech -> first audible reply frame, p95 within 10% of K=1's;
- every turn answered.

Not modelled (no WebRTC in the in-process room): Opus decoding of the microphone, Opus
encoding of the agent's voice, VP8 decoding of the camera. A production job process pays
those in the livekit FFI on top of what is measured here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import psutil  # type: ignore[import-untyped]  # no stubs installed

from .harness import PIPELINES, ProviderScript, exit_child, ratio, summarize

logger = logging.getLogger("bench.capacity")

Kind = Literal["ours", "stock", "none"]
SCRIPT = ProviderScript()
REPLY = (
    "It is noon in Paris right now. The weather there is mild and sunny so it is a lovely "
    "afternoon for a walk along the river."
)
GAP_SECONDS = 0.15
RECORD_FRAME_MS = 50
"""The bench reads the agent's audio in 50 ms frames (split back into 10 ms entries): at
10 ms, recording cost ~3% of a core per session, more than the agent's VAD, and no
production job records its own output."""
E2E_TOLERANCE = 0.10


KS_ENV = "BENCH_CAPACITY_KS"
"""Comma-separated K steps instead of the full run's (e.g. ``1,16,20,25,28``: a shorter run
around the edge; K=1 is the baseline the others are judged against, so keep it)."""


def _ks_from_env() -> tuple[int, ...] | None:
    value = os.environ.get(KS_ENV, "").strip()
    if not value:
        return None
    ks = tuple(sorted({int(k) for k in value.split(",")}))
    if ks[0] != 1 or any(k < 1 for k in ks):
        raise SystemExit(f"{KS_ENV}: the steps must start at 1 (got {value!r})")
    return ks


@dataclass(frozen=True)
class CapacityConfig:
    ks: tuple[int, ...]
    """Tried in order; a pipeline stops at its first K that fails twice in a row."""
    seconds: float
    period: float
    together: bool
    """Run the kinds at once (quick sanity mode: numbers not comparable)."""

    @staticmethod
    def for_mode(quick: bool) -> CapacityConfig:
        if quick:
            return CapacityConfig(ks=(1,), seconds=7.0, period=5.0, together=True)
        return CapacityConfig(
            ks=_ks_from_env() or (1, 4, 8, 10, 12, 14, 16, 18, 20, 24, 28, 32),
            seconds=40.0,
            period=9.0,
            together=False,
        )


# ------------------------------------------------------------------ the child (a job process)


class _WarningCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.vad_lag = 0
        self.by_logger: dict[str, int] = {}
        self.first: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "slower than realtime" in message:
            self.vad_lag += 1
        self.by_logger[record.name] = self.by_logger.get(record.name, 0) + 1
        self.first.setdefault(record.name, message[:200])

    def reset(self) -> None:
        self.vad_lag = 0
        self.by_logger.clear()
        self.first.clear()


async def _run_session(
    kind: Kind,
    vad: Any,
    endpoints: dict[str, str],
    seconds: float,
    offset: float,
    period: float,
    warnings: _WarningCounter,
) -> dict[str, Any]:
    from livekit import rtc

    from worker.local_room import AudioRecorder, LocalRoom

    from .harness import (
        CAMERA_FPS,
        CAMERA_SIZE,
        BenchSession,
        CameraFeed,
        LoopMonitor,
        SessionOptions,
        first_after,
        first_audible_after,
        open_session,
        push_speech,
        silent_gaps,
        voiced_clip,
    )
    from .voice import TURNS

    proc = psutil.Process()
    session: BenchSession | None = None
    room: LocalRoom | None = None
    camera: CameraFeed | None = None
    idle_recorder: AudioRecorder | None = None
    if kind == "none":
        # The bench's own cost: the participant's media, and recording an (idle) agent track.
        room = LocalRoom()
        user = room.add_participant("user")
        mic = user.publish_microphone(sample_rate=48000)
        camera = CameraFeed(
            user.publish_camera(width=CAMERA_SIZE[0], height=CAMERA_SIZE[1]),
            CAMERA_SIZE,
            CAMERA_FPS,
        )
        camera.start()
        agent_source = rtc.AudioSource(48000, 1)
        idle_recorder = AudioRecorder(
            rtc.LocalAudioTrack.create_audio_track("agent", agent_source),
            frame_ms=RECORD_FRAME_MS,
        )
    else:
        session = await open_session(
            kind,
            SCRIPT,
            SessionOptions(vad=vad, record_frame_ms=RECORD_FRAME_MS),
            endpoints=endpoints,
        )
        mic = session.mic
    await asyncio.sleep(2.0)  # warm-up: streams open, first inferences done
    warnings.reset()
    monitor = LoopMonitor()
    monitor.start()
    cpu0 = proc.cpu_times()
    t0 = time.perf_counter()
    ends: list[float] = []
    k = 0
    while True:
        due = t0 + offset + k * period
        if due + 3.0 > t0 + seconds:  # a turn needs ~3 s of speech; keep it in the window
            break
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        _, e = await push_speech(mic, voiced_clip(TURNS[k % len(TURNS)].utterance))
        ends.append(e)
        k += 1
    await asyncio.sleep(max(0.0, t0 + seconds - time.perf_counter()))
    cpu1 = proc.cpu_times()
    t1 = time.perf_counter()
    health = await monitor.stop()
    rss = proc.memory_info().rss
    uss = proc.memory_full_info().uss
    turns: list[dict[str, Any]] = []
    if session is not None:
        # let the last reply finish before reading the recording
        with contextlib.suppress(TimeoutError):
            await session.wait_quiet(1.0, timeout=15.0)
        stopped = session.probe.events["agent_stopped_speaking"]
        for i, e in enumerate(ends):
            until = ends[i + 1] if i + 1 < len(ends) else time.perf_counter()
            p = first_audible_after(session.recorder, e, until)
            stop = first_after(stopped, p, until) if p is not None else None
            gaps = silent_gaps(session.recorder, p, stop, GAP_SECONDS) if p and stop else []
            turns.append(
                {
                    "e2e": None if p is None else round(p - e, 4),
                    "gaps": len(gaps),
                    "longest_gap": round(max((g[1] for g in gaps), default=0.0), 3),
                }
            )
        await session.aclose()
    else:
        assert camera is not None
        assert room is not None
        assert idle_recorder is not None
        await idle_recorder.aclose()
        await agent_source.aclose()
        await camera.aclose()
        await room.aclose()
    wall = t1 - t0
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return {
        "kind": kind,
        "pid": os.getpid(),
        "wall": round(wall, 3),
        "cpu_seconds": round(cpu, 3),
        "cpu_percent": round(100 * cpu / wall, 2),
        "rss_mb": round(rss / 2**20, 1),
        "uss_mb": round(uss / 2**20, 1),
        "threads": proc.num_threads(),
        "turns": turns,
        "vad_lag_warnings": warnings.vad_lag,
        "warnings": dict(warnings.by_logger),
        "warning_examples": dict(warnings.first),
        **health,
    }


async def _child(kind: Kind, endpoints: dict[str, str]) -> None:
    from .harness import prewarmed_job_process, voiced_clip
    from .voice import TURNS

    warnings = _WarningCounter()
    logging.getLogger().addHandler(warnings)
    vad = None if kind == "none" else prewarmed_job_process(kind, endpoints).userdata["vad"]
    for turn in TURNS:
        voiced_clip(turn.utterance)
    loop = asyncio.get_running_loop()
    print(json.dumps({"ready": os.getpid()}), flush=True)
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        cmd = json.loads(line)
        if cmd["cmd"] == "exit":
            return
        result = await _run_session(
            kind, vad, endpoints, cmd["seconds"], cmd["offset"], cmd["period"], warnings
        )
        print(json.dumps(result), flush=True)


# ------------------------------------------------------------------ the orchestrator


class _Child:
    def __init__(self, kind: Kind, endpoints: dict[str, str]) -> None:
        self.kind = kind
        self._endpoints = endpoints
        self.proc: asyncio.subprocess.Process | None = None
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in aclose)

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.capacity",
            "--child",
            self.kind,
            "--endpoints",
            json.dumps(self._endpoints),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=self._stderr,
        )

    async def _line(self, timeout: float) -> dict[str, Any]:
        assert self.proc is not None
        assert self.proc.stdout is not None
        while True:
            raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
            if not raw:
                self._stderr.seek(0)
                tail = self._stderr.read().decode(errors="replace")[-3000:]
                raise RuntimeError(f"capacity child ({self.kind}) died: {tail}")
            if raw.startswith(b"{"):
                result: dict[str, Any] = json.loads(raw)
                return result

    async def ready(self) -> None:
        await self._line(120)

    async def run(self, seconds: float, offset: float, period: float) -> dict[str, Any]:
        """The session's result, or ``{"failed": why}`` (a hung process is killed)."""
        assert self.proc is not None
        assert self.proc.stdin is not None
        cmd = {"cmd": "run", "seconds": seconds, "offset": offset, "period": period}
        try:
            self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
            await self.proc.stdin.drain()
            return await self._line(seconds + 60)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            return {"kind": self.kind, "failed": f"no result within {seconds + 60:.0f} s"}
        except (RuntimeError, BrokenPipeError, ConnectionResetError) as e:
            return {"kind": self.kind, "failed": str(e)[-500:]}

    async def aclose(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            assert proc.stdin is not None
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                proc.stdin.write(b'{"cmd": "exit"}\n')
                await proc.stdin.drain()
                proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        self._stderr.close()


class _Pools:
    """The session processes of the K step being run. Each step starts new ones and
    :meth:`retire` ends them after it: a production job process serves one job (0.12 does not
    reuse it), so no measurement runs in a process older sessions have used."""

    def __init__(self, endpoints: dict[str, str]) -> None:
        self._endpoints = endpoints
        self.pools: dict[Kind, list[_Child]] = {"ours": [], "stock": [], "none": []}

    async def start(self, kind: Kind, k: int) -> list[_Child]:
        await self.retire(kind)
        new = [_Child(kind, self._endpoints) for _ in range(k)]
        # start a few at a time: imports are CPU-bound
        for i in range(0, len(new), 4):
            batch = new[i : i + 4]
            for child in batch:
                await child.start()
            await asyncio.gather(*(child.ready() for child in batch))
        self.pools[kind] = new
        return new

    async def retire(self, kind: Kind) -> None:
        old, self.pools[kind] = self.pools[kind], []
        await asyncio.gather(*(child.aclose() for child in old), return_exceptions=True)

    async def aclose(self) -> None:
        for kind in self.pools:
            await self.retire(kind)


def _cpu_seconds(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


async def _run_k(
    pools: _Pools, kinds: tuple[Kind, ...], k: int, cfg: CapacityConfig, provider_pid: int
) -> list[dict[str, Any]]:
    """Run ``k`` sessions of each kind (at once if several kinds) and aggregate."""
    children = {kind: await pools.start(kind, k) for kind in kinds}
    await asyncio.sleep(1.0)
    prov0 = _cpu_seconds(provider_pid)
    psutil.cpu_percent(None)
    started = time.perf_counter()
    jobs = []
    for kind in kinds:
        for i, child in enumerate(children[kind]):
            offset = 0.3 + cfg.period * i / max(k, 1)
            jobs.append(child.run(cfg.seconds, offset, cfg.period))
    results = await asyncio.gather(*jobs)
    machine_cpu = psutil.cpu_percent(None)
    cores = psutil.cpu_count() or 1
    wall = time.perf_counter() - started
    prov_cpu = 100 * (_cpu_seconds(provider_pid) - prov0) / wall
    for kind in kinds:
        await pools.retire(kind)
    sessions_cpu = sum(r["cpu_percent"] for r in results)
    others = machine_cpu * cores - sessions_cpu - prov_cpu
    out = []
    for kind in kinds:
        failed = [r["failed"] for r in results if r["kind"] == kind and "failed" in r]
        mine = [r for r in results if r["kind"] == kind and "failed" not in r]
        turns = [t for r in mine for t in r["turns"]]
        out.append(
            {
                "kind": kind,
                "k": k,
                "cpu_percent_per_session": summarize(r["cpu_percent"] for r in mine),
                "cpu_percent_total": round(sum(r["cpu_percent"] for r in mine), 1),
                "rss_mb_per_session": summarize(r["rss_mb"] for r in mine),
                "uss_mb_per_session": summarize(r["uss_mb"] for r in mine),
                "providers_cpu_percent": round(prov_cpu, 1),
                "machine_cpu_percent_of_all_cores": round(machine_cpu, 1),
                "other_processes_cpu_percent": round(max(others, 0.0), 1),
                "turns": len(turns),
                "unanswered": sum(1 for t in turns if t["e2e"] is None),
                "e2e": summarize(t["e2e"] for t in turns),
                "playout_gaps": sum(t["gaps"] for t in turns),
                "longest_gap": max((t["longest_gap"] for t in turns), default=0.0),
                "vad_lag_warnings": sum(r["vad_lag_warnings"] for r in mine),
                "loop_lag_ms_p99_max": max((r["loop_lag_ms"]["p99"] for r in mine), default=None),
                "loop_lag_ms_max": max((r["loop_lag_ms"]["max"] for r in mine), default=None),
                "gc_max_pause_ms": max((r["gc_max_pause_ms"] or 0.0 for r in mine), default=None),
                "gc_full_collections": sum(r["gc_full_collections"] for r in mine),
                "warnings": _merge_counts(r["warnings"] for r in mine),
                "warning_examples": _merge_first(r["warning_examples"] for r in mine),
                "failed_sessions": len(failed),
                "failures": failed[:3],
            }
        )
    return out


def _progress(row: dict[str, Any]) -> None:
    cpu = row["cpu_percent_per_session"]["mean"]
    print(
        f"capacity: {row['kind']} K={row['k']} cpu/session={cpu}% e2e p95={row['e2e']['p95']} "
        f"real_time={row['real_time']} {'; '.join(row['why_not'])}",
        file=sys.stderr,
        flush=True,
    )


def _merge_first(dicts: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for d in dicts:
        for key, message in d.items():
            out.setdefault(key, message)
    return out


def _merge_counts(dicts: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for key, n in d.items():
            out[key] = out.get(key, 0) + n
    return out


def _judge(rows: list[dict[str, Any]]) -> None:
    """Mark each row real-time or not (against the same kind's K=1 e2e p95)."""
    base = {r["kind"]: r["e2e"]["p95"] for r in rows if r["k"] == 1}
    for r in rows:
        reasons = []
        if r["failed_sessions"]:
            reasons.append(f"{r['failed_sessions']} session processes failed or hung")
        if r["vad_lag_warnings"]:
            reasons.append(f"{r['vad_lag_warnings']} VAD lag warnings")
        if r["playout_gaps"]:
            reasons.append(f"{r['playout_gaps']} playout gaps")
        if r["kind"] != "none":
            if r["unanswered"]:
                reasons.append(f"{r['unanswered']} unanswered turns")
            b = base.get(r["kind"])
            p95 = r["e2e"]["p95"]
            if b is not None and p95 is not None and p95 > b * (1 + E2E_TOLERANCE):
                reasons.append(f"e2e p95 {p95:.3f} s > {b:.3f} s + 10%")
        r["real_time"] = not reasons
        r["why_not"] = reasons


def _last(rows: list[dict[str, Any]], kind: str, k: int) -> dict[str, Any] | None:
    """The last attempt of ``kind`` at ``k``."""
    mine = [r for r in rows if r["kind"] == kind and r["k"] == k]
    return mine[-1] if mine else None


async def run(quick: bool = False) -> dict[str, Any]:
    from .provider_proc import ProviderProcess, ProviderProcessConfig

    cfg = CapacityConfig.for_mode(quick)
    rows: list[dict[str, Any]] = []
    async with ProviderProcess(ProviderProcessConfig(script=SCRIPT, reply=REPLY)) as providers:
        pools = _Pools(providers.env)
        try:
            if cfg.together:
                for k in cfg.ks:
                    rows += await _run_k(pools, ("ours", "stock", "none"), k, cfg, providers.pid)
            else:
                rows += await _run_k(pools, ("none",), 1, cfg, providers.pid)
                stopped: set[str] = set()
                for i, k in enumerate(cfg.ks):
                    for kind in ("ours", "stock") if i % 2 == 0 else ("stock", "ours"):
                        if kind in stopped:
                            continue
                        for attempt in range(2):  # a failure is confirmed once
                            row = (await _run_k(pools, (kind,), k, cfg, providers.pid))[0]
                            row["attempt"] = attempt + 1
                            rows.append(row)
                            _judge(rows)
                            _progress(row)
                            if row["real_time"]:
                                break
                        else:
                            stopped.add(kind)
                    if stopped >= {"ours", "stock"}:
                        break
        finally:
            await pools.aclose()
    _judge(rows)
    largest: dict[str, int] = {}
    for kind in PIPELINES:
        verdict: dict[int, bool] = {}  # the last attempt at each K decides
        for r in rows:
            if r["kind"] == kind:
                verdict[r["k"]] = r["real_time"]
        ok = 0
        for k in sorted(verdict):
            if not verdict[k]:
                break
            ok = k
        largest[kind] = ok
    by_k: dict[str, dict[str, Any]] = {}
    for k in sorted({r["k"] for r in rows}):
        o = _last(rows, "ours", k)
        s = _last(rows, "stock", k)
        if o is None or s is None:
            continue
        by_k[str(k)] = {
            "cpu_per_session": ratio(
                o["cpu_percent_per_session"]["mean"], s["cpu_percent_per_session"]["mean"]
            ),
            "rss_per_session": ratio(
                o["rss_mb_per_session"]["mean"], s["rss_mb_per_session"]["mean"]
            ),
            "uss_per_session": ratio(
                o["uss_mb_per_session"]["mean"], s["uss_mb_per_session"]["mean"]
            ),
        }
    return {
        "part": "capacity",
        "config": {
            "ks": sorted({r["k"] for r in rows}),
            "seconds_per_run": cfg.seconds,
            "turn_period": cfg.period,
            "kinds_together": cfg.together,
            "providers": SCRIPT.__dict__,
            "reply": REPLY,
            "media": "48 kHz microphone (speech turns, live silence between), 640x480 I420 "
            "camera at 15 fps, agent audio recorded at 48 kHz in 50 ms frames",
            "driver_only": "kind none: the bench's participant alone (microphone, camera, and "
            "recording an idle agent track), the bench's share of each session's CPU",
            "processes": "new session processes for every K step (a production job process "
            "serves one job)",
            "real_time": "no VAD lag warning, no playout gap > 150 ms, every turn answered, "
            "e2e p95 within 10% of the same pipeline's K=1; a failing K is run a second time "
            "and a pipeline stops at its first K that fails twice",
            "not_modelled": "Opus decode/encode and VP8 decode (no WebRTC in the in-process room)",
            "cpu": "process CPU time / wall over the run, % of one core (2 cores = 200%)",
            "other_processes": "CPU used meanwhile by everything else on the machine (other "
            "work shares it), % of one core",
        },
        "runs": rows,
        "largest_real_time_k": largest,
        "ratios_ours_over_stock": by_k,
        "goals": {"ours_at_least_25_sessions": None if quick else largest["ours"] >= 25},
    }


def table(result: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows = []
    runs = result["runs"]

    def at(kind: str, k: int) -> dict[str, Any] | None:
        return _last(runs, kind, k)

    largest = result["largest_real_time_k"]
    rows.append(
        (
            "capacity: largest K in real time (2 cores)",
            str(largest["ours"]),
            str(largest["stock"]),
            "-" if not largest["stock"] else f"{largest['ours'] / largest['stock']:.2f}",
        )
    )
    shown = sorted({1, largest["ours"] or 1, largest["stock"] or 1})
    for k in shown:
        o, s = at("ours", k), at("stock", k)
        if o is None or s is None:
            continue
        oc, sc = o["cpu_percent_per_session"]["mean"], s["cpu_percent_per_session"]["mean"]
        orss, srss = o["uss_mb_per_session"]["mean"], s["uss_mb_per_session"]["mean"]
        rows.append(
            (
                f"capacity K={k}: CPU per session (% of a core)",
                f"{oc:.1f}%",
                f"{sc:.1f}%",
                "-" if ratio(oc, sc) is None else f"{ratio(oc, sc):.2f}",
            )
        )
        rows.append(
            (
                f"capacity K={k}: USS per session",
                f"{orss:.0f} MB",
                f"{srss:.0f} MB",
                "-" if ratio(orss, srss) is None else f"{ratio(orss, srss):.2f}",
            )
        )
    return rows


def draw(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for kind, color in (("ours", "tab:blue"), ("stock", "tab:gray"), ("none", "tab:green")):
        mine = sorted((r for r in runs if r["kind"] == kind), key=lambda r: r["k"])
        if not mine:
            continue
        ks = [r["k"] for r in mine]
        label = "driver only" if kind == "none" else kind
        axes[0].plot(
            ks, [r["cpu_percent_per_session"]["mean"] for r in mine], "o-", color=color, label=label
        )
        axes[1].plot(
            ks, [r["uss_mb_per_session"]["mean"] for r in mine], "o-", color=color, label=label
        )
        if kind != "none":
            axes[2].plot(ks, [r["e2e"]["p95"] for r in mine], "o-", color=color, label=label)
            bad = [r for r in mine if not r["real_time"]]
            axes[2].plot(
                [r["k"] for r in bad], [r["e2e"]["p95"] or 0 for r in bad], "rx", markersize=10
            )
    axes[0].set_ylabel("CPU per session (% of one core)")
    axes[1].set_ylabel("USS per session (MB)")
    axes[2].set_ylabel("e2e p95 (s); x = not real time")
    for ax in axes:
        ax.set_xlabel("concurrent sessions K")
        ax.legend()
    fig.suptitle("capacity: one process per session, 48 kHz mic + 640x480@15 fps camera")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", choices=("ours", "stock", "none"), required=True)
    parser.add_argument("--endpoints", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(_child(args.child, json.loads(args.endpoints)))
    exit_child()


if __name__ == "__main__":
    main()
