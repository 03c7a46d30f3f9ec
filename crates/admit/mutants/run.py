#!/usr/bin/env python3
"""Breaks the limiter on purpose, one way at a time, and checks that the loom
model (or proptest) meant to catch that break fails.

Each mutant is (file, original text, broken text, test target, test name).
Mutants are applied to a private copy of the crate (in a scratch
workspace), so the working tree is never touched.

Usage: python3 crates/admit/mutants/run.py [--preemptions N] [NAME ...]
       python3 crates/admit/mutants/run.py --check   (patterns still match; quick)
"""
import os, pathlib, shutil, subprocess, sys, tempfile

ROOT = pathlib.Path(__file__).resolve().parents[3]
# Created by make_scratch (copytree makes the parents), not at import.
SCRATCH = pathlib.Path(tempfile.gettempdir()) / f"admit-mutants-{os.getpid()}"
CRATE = SCRATCH / "crates" / "admit"
SRC = CRATE / "src"


MUTANTS = [
    ("cap_off_by_one", "inner.rs",
     "if cur.in_use() >= limit || (!critical && cur.tickets() != 0) {",
     "if cur.in_use() > limit || (!critical && cur.tickets() != 0) {",
     "loom_limiter", "cap_holds_under_racing_try_acquire"),
    ("lost_wakeup", "lease.rs",
     "        self.cold(index).wait_waker.wake();\n        true\n",
     "        true\n",
     "loom_limiter", "release_never_loses_the_wakeup"),
    ("cancel_drops_grant", "inner.rs",
     "                granted.then(|| self.take_grant(slot, gen, false))",
     "                let _ = granted;\n                None",
     "loom_limiter", "cancelled_waiter_passes_the_permit_on"),
    ("close_forgets_waiters", "inner.rs",
     "        self.queue.wake_all(prev.head(), prev.tail(), &self.leases);\n",
     "",
     "loom_limiter", "close_wakes_everyone_and_leaks_nothing"),
    ("set_capacity_blind_store", "inner.rs",
     """            match self.state.0.compare_exchange_weak(
                cur.0,
                next.0,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(actual) => cur = State(actual),
            }""",
     """            let _ = &mut cur;
            self.state.0.store(next.0, Ordering::Release);
            break;""",
     "loom_limiter", "set_capacity_races_keep_the_cap"),
    ("drop_ignores_reclaim", "lease.rs",
     "            if !matches!(\n                status_of(word),\n                status::HELD | status::REVOKING | status::REVOKED\n            ) {\n                return Released::Gone;\n            }\n",
     "",
     "loom_lease", "reclaim_racing_drop_releases_once"),
    ("stale_drop_frees_new_lease", "lease.rs",
     "            if gen_of(word) != gen {\n                return Released::Gone;\n            }\n            if !matches!(",
     "            if !matches!(",
     "loom_lease", "stale_holder_cannot_touch_or_free_the_next_lease"),
    ("revoke_forgets_holder", "lease.rs",
     "            self.cold(index).revoke_waker.wake();\n",
     "",
     "loom_lease", "revocation_wakes_the_holder"),
    ("revoke_counted_after_holder_sees_it", "inner.rs",
     "        self.revoked.fetch_add(1, Ordering::Relaxed);\n        self.leases.finish_revoke(slot, gen);\n",
     "        self.leases.finish_revoke(slot, gen);\n        self.revoked.fetch_add(1, Ordering::Relaxed);\n",
     "loom_lease", "a_revoked_holder_finds_its_revocation_counted"),
    ("shrink_grants_at_the_cap", "inner.rs",
     "            if cur.closed() || cur.tickets() == 0 || cur.in_use() >= self.limit(cur) {",
     "            if cur.closed() || cur.tickets() == 0 || cur.in_use() > self.limit(cur) {",
     "loom_limiter", "shrink_while_waiting_keeps_the_new_cap"),
    ("abandoned_grant_leaks", "inner.rs",
     "                        Deliver::Abandoned => self.uncount(),",
     "                        Deliver::Abandoned => {}",
     "loom_limiter", "an_abandoned_waiter_leaves_no_trace"),
    ("ghost_keeps_its_permit", "inner.rs",
     "                            self.ghosts.fetch_sub(1, Ordering::AcqRel);\n                            self.uncount();",
     "                            self.ghosts.fetch_sub(1, Ordering::AcqRel);",
     "loom_limiter", "an_abandoned_waiter_leaves_no_trace"),
    ("cache_pop_keeps_slot", "lease.rs",
     "        cache.len.store(len - 1, Ordering::Relaxed);\n",
     "",
     "loom_lease", "a_cached_slot_is_handed_over_at_thread_exit"),
    # A revoked lease in a token slot is freed on drop, never parked: its
    # count is released, so a token left behind would be counted nowhere.
    ("revoked_lease_parks_a_token", "lease.rs",
     "            // loses) synchronises with this drop.\n            match slot.state.compare_exchange_weak(\n                word,\n                pack(gen, status::FREE),",
     "            // loses) synchronises with this drop.\n            match slot.state.compare_exchange_weak(\n                word,\n                pack(gen, if status_of(word) == status::REVOKED && self.is_token_slot(index) { status::TOKEN } else { status::FREE }),",
     "loom_tokens", "a_token_permit_racing_revoke_and_reclaim_is_released_once"),
    # The drop's fast path parks only an OWNED lease: one settled as HELD
    # by a sealer must be freed, not parked in the sealed shard.
    ("settled_lease_parks_a_token", "lease.rs",
     "                        pack(gen, status::OWNED),\n                        pack(gen, status::TOKEN),",
     "                        pack(gen, status::HELD),\n                        pack(gen, status::TOKEN),",
     "loom_tokens", "close_with_a_parked_token_still_drains"),
    # A waiter takes tokens back twice: before queueing (they may be all
    # that fills the limiter) and after taking its ticket (the RMW-then-seal
    # order); each covers most of the other's cases, so both go.
    ("enqueue_keeps_tokens", "inner.rs",
     ["            } else if cur.tickets() == 0 && self.flush_tokens() > 0 {",
      "                            self.flush_tokens();\n                            Entry::Ticket(t)"],
     ["            } else if false {",
      "                            Entry::Ticket(t)"],
     "loom_tokens", "a_waiter_is_not_left_beside_a_parked_token"),
    ("shrink_keeps_tokens", "inner.rs",
     "        self.flush_tokens();\n        self.grant_waiting();\n        Ok(())",
     "        self.grant_waiting();\n        Ok(())",
     "loom_tokens", "a_shrink_racing_token_reuse_keeps_the_new_cap"),
    ("seal_forgets_token", "lease.rs",
     "            index => self.settle(index),",
     "            _ => 0,",
     "loom_tokens", "close_with_a_parked_token_still_drains"),
    ("token_taken_twice", "lease.rs",
     """        slot.state
            .compare_exchange(
                word,
                pack(gen, status::OWNED),
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .ok()?;""",
     """        slot.state.store(pack(gen, status::OWNED), Ordering::Release);""",
     "loom_tokens", "a_token_is_handed_over_at_thread_exit"),
    ("seal_forgets_untracked_token", "lease.rs",
     "        parked + u32::from(own_spare(own))",
     "        parked",
     "loom_tokens", "close_with_a_parked_untracked_token_still_drains"),
    ("untracked_token_parks_in_a_sealed_shard", "lease.rs",
     "        own_open(own)\n            && !own_spare(own)",
     "        !own_spare(own)",
     "loom_tokens", "a_waiter_is_not_left_beside_a_parked_untracked_token"),
    ("shard_opens_without_ordering", "inner.rs",
     "        let s = State(self.state.0.fetch_add(0, Ordering::AcqRel));",
     "        let s = self.load();",
     "loom_tokens", "a_shard_opening_racing_close_leaves_no_token"),
]


def make_scratch():
    """A copy of the workspace with only this crate and the reference model
    its tests depend on."""
    shutil.copytree(ROOT / "crates/admit", CRATE, ignore=shutil.ignore_patterns("mutants"))
    shutil.copytree(ROOT / "crates/admit-model", SCRATCH / "crates/admit-model")
    ws = (ROOT / "Cargo.toml").read_text()
    members = 'members = ["crates/*", "examples/*", "benches"]'
    assert ws.count(members) == 1, "the workspace's members line changed; update make_scratch"
    ws = ws.replace(members, 'members = ["crates/admit", "crates/admit-model"]')
    (SCRATCH / "Cargo.toml").write_text(ws)
    shutil.copy(ROOT / "Cargo.lock", SCRATCH / "Cargo.lock")


def run(name, file, old, new, target, test, preemptions):
    path = SRC / file
    original = path.read_text()
    broken = original
    # A mutant is one edit, or several made together (lists of patterns).
    for o, n in zip(*((old, new) if isinstance(old, list) else ([old], [new]))):
        assert broken.count(o) == 1, f"{name}: pattern not found exactly once in {file}"
        broken = broken.replace(o, n)
    path.write_text(broken)
    try:
        env = dict(os.environ, RUSTFLAGS="--cfg admit_loom",
                   LOOM_MAX_PREEMPTIONS=str(preemptions))
        env.setdefault("CARGO_TARGET_DIR", str(ROOT / "target/loom-mutants"))
        # A mutant that does not build proves nothing about the model.
        b = subprocess.run(
            ["cargo", "test", "-q", "--release", "--test", target, "--no-run"],
            cwd=CRATE, env=env, capture_output=True, text=True, timeout=1800)
        if b.returncode != 0:
            lines = [l for l in b.stderr.splitlines() if l.strip()]
            return False, "DID NOT BUILD: " + " | ".join(lines[-3:])[:300]
        r = subprocess.run(
            ["cargo", "test", "-q", "--release", "--test", target,
             "--", "--exact", test],
            cwd=CRATE, env=env, capture_output=True, text=True, timeout=1800)
        caught = r.returncode != 0
        why = ""
        for line in (r.stdout + r.stderr).splitlines():
            if "panicked" in line or "deadlock" in line.lower() or "assert" in line:
                why = line.strip()[:160]
                break
        return caught, why
    finally:
        path.write_text(original)


def check_patterns():
    """Every mutant's pattern must still match the code exactly once; a
    refactor that moves it would otherwise leave a mutant that tests nothing."""
    src = ROOT / "crates/admit/src"
    def matches(m):
        text = (src / m[1]).read_text()
        return all(text.count(o) == 1 for o in (m[2] if isinstance(m[2], list) else [m[2]]))
    stale = [m[0] for m in MUTANTS if not matches(m)]
    for name in stale:
        print(f"{name}: pattern not found exactly once; update it to the current code")
    sys.exit(1 if stale else 0)


def main():
    args = sys.argv[1:]
    if args == ["--check"]:
        check_patterns()
    preemptions = 2
    if args[:1] == ["--preemptions"]:
        preemptions = int(args[1])
        args = args[2:]
    make_scratch()
    failed = False
    for m in MUTANTS:
        if args and m[0] not in args:
            continue
        caught, why = run(*m, preemptions)
        print(f"{m[0]:28} {'caught' if caught else 'NOT CAUGHT'}  {m[4]}::{m[5]}  {why}", flush=True)
        failed |= not caught
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
