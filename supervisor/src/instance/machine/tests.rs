//! Every transition of the state table, driven by hand: no process, no clock, no runtime.

use super::table::step;
use super::*;
use crate::backoff::START_THRESHOLD;

const GRACE: Duration = Duration::from_secs(10);
const QUICK: Duration = Duration::from_millis(5);

fn new(duty: Duty) -> Machine {
    Machine::new(duty, GRACE)
}

/// `machine` moved to `state` (the history is kept).
fn with(machine: &Machine, state: State) -> Machine {
    Machine {
        state,
        ..machine.clone()
    }
}

fn notes(actions: &[Action]) -> Vec<&str> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Note(n) => Some(n.as_str()),
            _ => None,
        })
        .collect()
}

fn without_notes(actions: &[Action]) -> Vec<Action> {
    actions
        .iter()
        .filter(|a| !matches!(a, Action::Note(_)))
        .cloned()
        .collect()
}

/// A service started at `t` with pid `pid`: Idle → Start → Spawned.
fn running_service(t: Instant, pid: u32) -> Machine {
    let (m, a) = step(new(Duty::Service), Event::Start, t);
    assert_eq!(a, [Action::Spawn]);
    let (m, _) = step(m, Event::Spawned { pid }, t);
    m
}

fn stopping(pid: u32, deadline: Instant, then: Then) -> State {
    State::Stopping {
        pid,
        deadline,
        killed: false,
        leader_exited: false,
        then,
    }
}

#[test]
fn a_service_spawns_on_start_and_runs_once_spawned() {
    let t = Instant::now();
    let (m, a) = step(new(Duty::Service), Event::Start, t);
    assert_eq!(
        (&m.state, a.as_slice()),
        (&State::Spawning, &[Action::Spawn][..])
    );
    assert_eq!(m.shown_as(), InstanceState::Starting);
    let (m, a) = step(m, Event::Spawned { pid: 7 }, t);
    assert_eq!(m.state, State::Running { pid: 7, since: t });
    assert_eq!(notes(&a), ["started pid 7"]);
    assert_eq!(m.process(), (Some(7), Some(t)));
    assert_eq!(m.deadline(), None);
}

#[test]
fn a_web_instance_is_starting_until_its_probe_passes() {
    let t = Instant::now();
    let (m, _) = step(new(Duty::Web), Event::Start, t);
    let (m, _) = step(m, Event::Spawned { pid: 7 }, t);
    let due = t + PROBE_FIRST;
    assert_eq!(m.deadline(), Some(due));
    assert_eq!(m.shown_as(), InstanceState::Starting);
    let (m, a) = step(m, Event::Deadline, due);
    assert_eq!(a, [Action::Probe]);
    assert_eq!(m.deadline(), None, "no deadline while a probe runs");
    let (m, a) = step(m, Event::Probed(Err("connection refused".into())), due);
    assert!(a.is_empty());
    assert_eq!(m.last_probe(), Some("connection refused"));
    assert_eq!(m.deadline(), Some(due + PROBE_FIRST * 2));
    let (m, _) = step(m, Event::Deadline, due + PROBE_FIRST * 2);
    let (m, a) = step(m, Event::Probed(Ok("accepting on 4000".into())), due);
    assert_eq!(m.state, State::Running { pid: 7, since: t });
    assert_eq!(notes(&a), ["accepting on 4000"]);
    assert_eq!(m.last_probe(), None);
    assert_eq!(m.shown_as(), InstanceState::Running);
}

#[test]
fn probes_double_to_every_200ms_then_every_second_after_10s() {
    let t = Instant::now();
    let (m, _) = step(new(Duty::Web), Event::Start, t);
    let (mut m, _) = step(m, Event::Spawned { pid: 7 }, t);
    let mut waits = Vec::new();
    let mut now = t;
    while now < t + PROBE_SLOW_AFTER + Duration::from_secs(3) {
        let Some(at) = m.deadline() else {
            panic!("a starting instance always has its next probe")
        };
        now = at;
        (m, _) = step(m, Event::Deadline, now);
        (m, _) = step(m, Event::Probed(Err("refused".into())), now);
        waits.push(m.deadline().map(|d| (d - now).as_millis()));
    }
    assert_eq!(
        waits[..5],
        [Some(40), Some(80), Some(160), Some(200), Some(200)]
    );
    assert_eq!(waits.last(), Some(&Some(1000)));
}

#[test]
fn a_stale_probe_result_changes_nothing() {
    let t = Instant::now();
    let (m, _) = step(new(Duty::Web), Event::Start, t);
    let (m, _) = step(m, Event::Spawned { pid: 7 }, t);
    // No probe runs yet: a result cannot be about this process.
    let (after, a) = step(m.clone(), Event::Probed(Ok("ready".into())), t);
    assert_eq!((after, a), (m.clone(), vec![]));
    // Nor while running.
    let running = with(&m, State::Running { pid: 7, since: t });
    let (after, a) = step(running.clone(), Event::Probed(Err("x".into())), t);
    assert_eq!((after, a), (running, vec![]));
}

#[test]
fn failed_starts_restart_at_once_then_back_off_doubling_to_a_30s_cap() {
    let mut now = Instant::now();
    let mut m = running_service(now, 1);
    let mut delays = Vec::new();
    let mut shown = Vec::new();
    for pid in 2..=13 {
        now += QUICK;
        let (next, a) = step(m, Event::Exited("exit 3".into()), now);
        m = next;
        assert_eq!(
            a[0],
            Action::ClearGroup {
                pgid: pid - 1,
                grace: GRACE
            }
        );
        shown.push(m.shown_as());
        match m.state {
            State::Spawning => {
                assert_eq!(
                    notes(&a),
                    ["exited with exit 3 after 0.0 s, restarting at once"]
                );
                assert_eq!(a.last(), Some(&Action::Spawn));
                delays.push(0);
            }
            State::BackingOff { until } => {
                let delay = until - now;
                assert_eq!(
                    notes(&a),
                    [format!(
                        "exited with exit 3 after 0.0 s, restarting in {:.1} s",
                        delay.as_secs_f64()
                    )]
                );
                assert_eq!(m.deadline(), Some(until));
                delays.push(delay.as_millis());
                let (next, a) = step(m, Event::Deadline, until);
                assert_eq!(a, [Action::Spawn]);
                m = next;
                now = until;
            }
            ref other => panic!("after a crash: {other:?}"),
        }
        let (next, _) = step(m, Event::Spawned { pid }, now);
        m = next;
    }
    assert_eq!(
        delays,
        [
            0, 100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000
        ]
    );
    // Every crash was followed by a start.
    assert_eq!((m.restarts(), m.exits()), (12, 12));
    assert_eq!(m.last_exit(), Some("exit 3"));
    // Back-off until the fifth quick crash in a row, crash-looping from then on.
    assert_eq!(shown[0], InstanceState::Starting);
    assert_eq!(shown[1..4], [InstanceState::Backoff; 3]);
    assert!(shown[4..].iter().all(|s| *s == InstanceState::CrashLooping));
}

/// Five failed starts in a row: crash-looping, the next start 1.6 s away.
fn crash_looping_service(mut now: Instant) -> (Machine, Instant) {
    let mut m = running_service(now, 1);
    for pid in 2..=6 {
        now += QUICK;
        (m, _) = step(m, Event::Exited("exit 1".into()), now);
        if let State::BackingOff { until } = m.state {
            now = until;
            (m, _) = step(m, Event::Deadline, now);
        }
        (m, _) = step(m, Event::Spawned { pid }, now);
    }
    (m, now)
}

#[test]
fn an_exit_after_the_process_had_started_restarts_at_once_whatever_its_history() {
    let (mut m, mut now) = crash_looping_service(Instant::now());
    // Twenty kills, each after the process had run past the start threshold: twenty
    // restarts at once, never a back-off.
    for pid in 7..27 {
        now += START_THRESHOLD;
        let (next, a) = step(m, Event::Exited("SIGKILL".into()), now);
        assert_eq!(next.state, State::Spawning, "restarted at once");
        assert_eq!(
            notes(&a),
            ["exited with SIGKILL after 1.0 s, restarting at once"]
        );
        assert_eq!(a.last(), Some(&Action::Spawn));
        (m, _) = step(next, Event::Spawned { pid }, now);
        assert_eq!(m.shown_as(), InstanceState::Running);
    }
    assert_eq!(m.last_exit(), Some("SIGKILL"));
    // The history is gone: a failed start now is a first one (at once), then 100 ms.
    let (m, _) = step(m, Event::Exited("exit 1".into()), now + QUICK);
    assert_eq!(m.state, State::Spawning);
    let (m, _) = step(m, Event::Spawned { pid: 99 }, now + QUICK);
    let (m, _) = step(m, Event::Exited("exit 1".into()), now + QUICK * 2);
    assert_eq!(
        m.state,
        State::BackingOff {
            until: now + QUICK * 2 + Duration::from_millis(100)
        }
    );
}

#[test]
fn an_exit_just_short_of_the_threshold_is_a_failed_start() {
    let (m, now) = crash_looping_service(Instant::now());
    let now = now + START_THRESHOLD - Duration::from_millis(1);
    let (m, a) = step(m, Event::Exited("SIGKILL".into()), now);
    assert_eq!(m.shown_as(), InstanceState::CrashLooping);
    assert_eq!(
        notes(&a),
        ["exited with SIGKILL after 1.0 s, restarting in 1.6 s"]
    );
}

#[test]
fn a_web_instance_has_started_only_once_ready() {
    let t = Instant::now();
    // Up for a minute without passing its probe, then gone: a failure while starting.
    let (m, _) = step(new(Duty::Web), Event::Start, t);
    let (m, _) = step(m, Event::Spawned { pid: 7 }, t);
    let mut m = m;
    m.backoff.record_exit(false);
    let later = t + Duration::from_secs(60);
    let (m, a) = step(m, Event::Exited("exit 1".into()), later);
    assert_eq!(
        m.state,
        State::BackingOff {
            until: later + Duration::from_millis(100)
        }
    );
    assert_eq!(
        notes(&a),
        ["exited with exit 1 after 60.0 s, before it was ready, restarting in 0.1 s"]
    );
    // Ready, up past the threshold, killed: at once, whatever came before.
    let m = with(&m, State::Running { pid: 8, since: t });
    let (m, _) = step(m, Event::Exited("SIGKILL".into()), later);
    assert_eq!(m.state, State::Spawning);
}

#[test]
fn a_recycle_restarts_gracefully_and_says_why() {
    let t = Instant::now();
    let m = running_service(t, 7);
    let (m, a) = step(
        m,
        Event::Recycle {
            reason: "memory-soft-limit restart".into(),
            note: "memory over the soft mark".into(),
        },
        t,
    );
    assert_eq!(
        a,
        [
            Action::Note("memory over the soft mark".into()),
            Action::Terminate { pgid: 7 }
        ]
    );
    assert_eq!(m.state, stopping(7, t + GRACE, Then::Resume));
    let (m, _) = step(m, Event::Exited("SIGTERM".into()), t + QUICK);
    let (m, a) = step(m, Event::GroupGone, t + QUICK);
    assert_eq!(a, [Action::Spawn]);
    assert_eq!(m.last_exit(), Some("memory-soft-limit restart"));
    assert_eq!((m.restarts(), m.exits()), (1, 0));
    // Nothing to recycle between processes, nor a cron run.
    let backing = with(&m, State::BackingOff { until: t + GRACE });
    let recycle = || Event::Recycle {
        reason: "r".into(),
        note: "n".into(),
    };
    let (after, a) = step(backing.clone(), recycle(), t);
    assert_eq!((after, a), (backing, vec![]));
    let cron = with(&new(Duty::Cron), State::Running { pid: 9, since: t });
    let (after, a) = step(cron.clone(), recycle(), t);
    assert_eq!((after, a), (cron, vec![]));
}

#[test]
fn a_replacement_inherits_the_history_it_is_given() {
    let mut m = new(Duty::Web);
    m.inherit(4, "memory-soft-limit restart".into());
    assert_eq!(
        (m.restarts(), m.last_exit()),
        (4, Some("memory-soft-limit restart"))
    );
}

#[test]
fn a_spawn_failure_is_a_crash_with_its_reason() {
    let t = Instant::now();
    let (m, _) = step(new(Duty::Service), Event::Start, t);
    let why = "cannot start `nope`: No such file or directory (os error 2)";
    let (m, a) = step(m, Event::SpawnFailed(why.into()), t);
    assert_eq!(
        m.state,
        State::Spawning,
        "the first failure retries at once"
    );
    assert_eq!(notes(&a), [format!("{why}, restarting at once")]);
    assert_eq!((m.last_exit(), m.exits(), m.restarts()), (Some(why), 1, 1));
    let (m, a) = step(m, Event::SpawnFailed(why.into()), t);
    assert_eq!(
        m.state,
        State::BackingOff {
            until: t + Duration::from_millis(100)
        }
    );
    assert_eq!(without_notes(&a), []);
    assert_eq!(m.process(), (None, None));
}

#[test]
fn restart_during_back_off_spawns_now_and_forgets_the_back_off() {
    let t = Instant::now();
    let m = with(&new(Duty::Service), State::BackingOff { until: t + GRACE });
    let mut m = m;
    for _ in 0..6 {
        m.backoff.record_exit(false);
    }
    let (m, a) = step(m, Event::Restart, t);
    assert_eq!(m.state, State::Spawning);
    assert_eq!(a, [Action::Note("restart requested".into()), Action::Spawn]);
    let (m, _) = step(m, Event::Spawned { pid: 3 }, t);
    let (m, _) = step(m, Event::Exited("exit 1".into()), t + QUICK);
    assert_eq!(m.state, State::Spawning, "the back-off starts over");
}

#[test]
fn stop_during_back_off_ends_without_a_signal() {
    let t = Instant::now();
    let m = with(&new(Duty::Service), State::BackingOff { until: t + GRACE });
    let (m, a) = step(m, Event::Stop, t);
    assert_eq!(m.state, State::Stopped);
    assert_eq!(a, [Action::Note("stopped".into())]);
}

#[test]
fn stop_before_the_first_start_ends_at_once() {
    let t = Instant::now();
    let (m, a) = step(new(Duty::Web), Event::Stop, t);
    assert_eq!((m.state, a), (State::Stopped, vec![]));
    // A restart before the first start changes nothing: the start is fresh anyway.
    let (m, a) = step(new(Duty::Web), Event::Restart, t);
    assert_eq!((m.state, a), (State::Idle, vec![]));
}

#[test]
fn stop_during_start_terminates_the_group_and_waits_for_it() {
    let t = Instant::now();
    let (m, _) = step(new(Duty::Web), Event::Start, t);
    let (m, _) = step(m, Event::Spawned { pid: 7 }, t);
    let (m, a) = step(m, Event::Stop, t);
    assert_eq!(a, [Action::Terminate { pgid: 7 }]);
    assert_eq!(m.state, stopping(7, t + GRACE, Then::End));
    assert_eq!(m.shown_as(), InstanceState::Stopping);
    assert_eq!(m.deadline(), Some(t + GRACE));
    // The leader exits: the rest of its group must be gone too before the stop is over.
    let (m, a) = step(m, Event::Exited("SIGTERM".into()), t + QUICK);
    assert_eq!(a, [Action::AwaitGroupGone { pgid: 7 }]);
    assert_eq!(m.last_exit(), Some("SIGTERM"));
    assert_eq!(m.exits(), 0, "an exit asked for is not a crash");
    assert_eq!(m.process(), (None, None));
    let (m, a) = step(m, Event::GroupGone, t + QUICK);
    assert_eq!(m.state, State::Stopped);
    assert_eq!(notes(&a), ["stopped"]);
}

#[test]
fn grace_expiry_kills_the_group_then_gives_up_after_5_seconds() {
    let t = Instant::now();
    let m = running_service(t, 7);
    let (m, _) = step(m, Event::Stop, t);
    let (m, a) = step(m, Event::Deadline, t + GRACE);
    assert_eq!(a, [Action::Kill { pgid: 7 }]);
    assert_eq!(m.deadline(), Some(t + GRACE + AFTER_KILL));
    // Killed and exited: done as soon as the group is gone.
    let (done, _) = step(m.clone(), Event::Exited("SIGKILL".into()), t + GRACE);
    let (done, _) = step(done, Event::GroupGone, t + GRACE);
    assert_eq!(done.state, State::Stopped);
    // Stuck in the kernel: the stop stops waiting, and says so.
    let (m, a) = step(m, Event::Deadline, t + GRACE + AFTER_KILL);
    assert_eq!(m.state, State::Stopped);
    assert!(
        notes(&a)[0].contains("still has members 5 s after SIGKILL"),
        "{a:?}"
    );
}

#[test]
fn a_restart_stops_the_process_then_spawns_a_fresh_one() {
    let t = Instant::now();
    let m = running_service(t, 7);
    let (m, a) = step(m, Event::Restart, t);
    assert_eq!(
        a,
        [
            Action::Note("restart requested".into()),
            Action::Terminate { pgid: 7 }
        ]
    );
    assert!(!m.settled(), "the requester waits");
    let (m, _) = step(m, Event::Exited("SIGTERM".into()), t);
    let (m, a) = step(m, Event::GroupGone, t);
    assert_eq!((m.state.clone(), a), (State::Spawning, vec![Action::Spawn]));
    let (m, _) = step(m, Event::Spawned { pid: 8 }, t);
    assert!(m.settled());
    assert_eq!(m.restarts(), 0, "a restart asked for is not counted as one");
}

#[test]
fn during_a_restart_a_stop_wins_and_a_second_restart_is_the_same_one() {
    let t = Instant::now();
    let (m, _) = step(running_service(t, 7), Event::Restart, t);
    let (again, a) = step(m.clone(), Event::Restart, t);
    assert_eq!((again, a), (m.clone(), vec![]));
    let (m, a) = step(m, Event::Stop, t);
    assert_eq!(a, []);
    assert_eq!(m.state, stopping(7, t + GRACE, Then::End));
    // And a restart cannot undo a stop.
    let (m, _) = step(m, Event::Restart, t);
    let (m, _) = step(m, Event::Exited("SIGTERM".into()), t);
    let (m, _) = step(m, Event::GroupGone, t);
    assert_eq!(m.state, State::Stopped);
}

#[test]
fn exits_and_requests_are_seen_during_the_grace_period() {
    // The old shell awaited the whole stop; here each is an event of the `Stopping` state.
    let t = Instant::now();
    let (m, _) = step(running_service(t, 7), Event::Stop, t);
    let (m, _) = step(m, Event::Exited("exit 0".into()), t + QUICK);
    assert_eq!(
        m.state,
        State::Stopping {
            pid: 7,
            deadline: t + GRACE,
            killed: false,
            leader_exited: true,
            then: Then::End
        }
    );
    // The group outlives its leader past the grace period: SIGKILL, still waiting for it.
    let (m, a) = step(m, Event::Deadline, t + GRACE);
    assert_eq!(a, [Action::Kill { pgid: 7 }]);
    let (m, _) = step(m, Event::GroupGone, t + GRACE);
    assert_eq!(m.state, State::Stopped);
}

#[test]
fn a_cron_entry_waits_runs_when_due_and_skips_an_overlap() {
    let t = Instant::now();
    let (m, a) = step(new(Duty::Cron), Event::Start, t);
    assert_eq!((m.state.clone(), a), (State::Waiting, vec![]));
    assert_eq!(m.shown_as(), InstanceState::Waiting);
    let (m, a) = step(m, Event::Due, t);
    assert_eq!(a, [Action::Spawn]);
    let (m, a) = step(m, Event::Spawned { pid: 9 }, t);
    assert_eq!(notes(&a), ["run started, pid 9"]);
    assert_eq!(m.shown_as(), InstanceState::Running);
    let (m, a) = step(m, Event::Due, t);
    assert_eq!(notes(&a), ["previous run still going, skipping"]);
    assert_eq!(without_notes(&a), []);
    // The run ends: what it left in its group goes before the entry waits again.
    let (m, a) = step(m, Event::Exited("exit 0".into()), t);
    assert_eq!(
        a,
        [
            Action::Note("run finished: exit 0".into()),
            Action::Terminate { pgid: 9 },
            Action::AwaitGroupGone { pgid: 9 }
        ]
    );
    assert_eq!(m.shown_as(), InstanceState::Waiting);
    assert_eq!(m.deadline(), Some(t + CRON_CLEAR_GRACE));
    let (m, a) = step(m, Event::Due, t);
    assert_eq!(notes(&a), ["previous run still going, skipping"]);
    let (m, _) = step(m, Event::GroupGone, t);
    assert_eq!(m.state, State::Waiting);
    assert_eq!(m.restarts(), 0, "cron runs are not restarts");
}

#[test]
fn a_cron_run_that_cannot_start_waits_for_the_next_one() {
    let t = Instant::now();
    let (m, _) = step(with(&new(Duty::Cron), State::Waiting), Event::Due, t);
    let (m, a) = step(m, Event::SpawnFailed("cannot start `job`".into()), t);
    assert_eq!(m.state, State::Waiting);
    assert_eq!(a, [Action::Note("cannot start `job`".into())]);
    assert_eq!(m.last_exit(), Some("cannot start `job`"));
}

#[test]
fn stopping_a_cron_run_notes_how_it_finished() {
    let t = Instant::now();
    let m = with(&new(Duty::Cron), State::Running { pid: 9, since: t });
    let (m, a) = step(m, Event::Stop, t);
    assert_eq!(a, [Action::Terminate { pgid: 9 }]);
    let (m, a) = step(m, Event::Exited("SIGTERM".into()), t);
    assert_eq!(notes(&a), ["run finished: SIGTERM"]);
    let (m, a) = step(m, Event::GroupGone, t);
    assert_eq!((m.state, notes(&a)), (State::Stopped, vec!["stopped"]));
    // Between runs a stop ends at once.
    let (m, _) = step(with(&new(Duty::Cron), State::Waiting), Event::Stop, t);
    assert_eq!(m.state, State::Stopped);
}

#[test]
fn restarting_a_cron_entry_stops_its_run_and_waits_again() {
    let t = Instant::now();
    let m = with(&new(Duty::Cron), State::Running { pid: 9, since: t });
    let (m, _) = step(m, Event::Restart, t);
    let (m, _) = step(m, Event::Exited("SIGTERM".into()), t);
    let (m, a) = step(m, Event::GroupGone, t);
    assert_eq!((m.state.clone(), a), (State::Waiting, vec![]));
    assert!(m.settled());
    let (m, a) = step(m, Event::Restart, t);
    assert_eq!((m.state, a), (State::Waiting, vec![]));
}

/// Every state, as the table knows them.
fn every_state(t: Instant) -> Vec<State> {
    let mut states = vec![
        State::Idle,
        State::Spawning,
        State::Starting {
            pid: 7,
            since: t,
            probe: Probe::Due {
                at: t,
                every: PROBE_FIRST,
            },
        },
        State::Starting {
            pid: 7,
            since: t,
            probe: Probe::InFlight { every: PROBE_FIRST },
        },
        State::Running { pid: 7, since: t },
        State::BackingOff { until: t },
        State::Waiting,
        State::Stopped,
    ];
    for killed in [false, true] {
        for leader_exited in [false, true] {
            for then in [Then::Resume, Then::End] {
                states.push(State::Stopping {
                    pid: 7,
                    deadline: t,
                    killed,
                    leader_exited,
                    then,
                });
            }
        }
    }
    states
}

fn every_event() -> Vec<Event> {
    vec![
        Event::Start,
        Event::Spawned { pid: 8 },
        Event::SpawnFailed("cannot start".into()),
        Event::Exited("exit 1".into()),
        Event::Deadline,
        Event::Probed(Ok("ready".into())),
        Event::Probed(Err("refused".into())),
        Event::GroupGone,
        Event::Due,
        Event::Restart,
        Event::Stop,
        Event::Recycle {
            reason: "memory-soft-limit restart".into(),
            note: "over the soft mark".into(),
        },
    ]
}

#[test]
fn every_state_and_event_is_decided() {
    let t = Instant::now();
    let mut cases = 0;
    for duty in [Duty::Service, Duty::Web, Duty::Cron] {
        for state in every_state(t) {
            for event in every_event() {
                let before = with(&new(duty), state.clone());
                let (after, actions) = step(before.clone(), event.clone(), t);
                cases += 1;
                // Stopped is final.
                if state == State::Stopped {
                    assert_eq!((&after, actions.as_slice()), (&before, &[][..]));
                }
                // Only a spawn's result moves `Spawning` (the shell feeds it first).
                if state == State::Spawning
                    && !matches!(event, Event::Spawned { .. } | Event::SpawnFailed(_))
                {
                    assert_eq!(after, before, "{event:?}");
                }
                // A stop always ends up stopped, or stopping towards the end.
                if event == Event::Stop && state != State::Spawning {
                    assert!(
                        matches!(
                            after.state,
                            State::Stopped
                                | State::Stopping {
                                    then: Then::End,
                                    ..
                                }
                        ),
                        "{duty:?} {state:?}: {:?}",
                        after.state
                    );
                }
                // A spawn is always followed by its result, nothing else.
                if actions.contains(&Action::Spawn) {
                    assert_eq!(after.state, State::Spawning, "{state:?} {event:?}");
                    assert_eq!(actions.last(), Some(&Action::Spawn));
                }
            }
        }
    }
    assert_eq!(cases, 3 * 16 * 12);
}

/// An upgrade carries the history over: a crash-looping instance waiting to restart is still
/// crash-looping and waiting in the next image, and goes on counting from there.
#[test]
fn a_back_off_carried_over_by_an_upgrade_goes_on() {
    let t = Instant::now();
    let history = History {
        restarts: 7,
        exits: 8,
        last_exit: Some("exit 3".into()),
        failed_starts: 7,
    };
    let mut m = new(Duty::Service);
    m.resume_backing_off(history.clone(), t + Duration::from_millis(1600));
    assert_eq!(m.shown_as(), InstanceState::CrashLooping);
    assert_eq!(m.deadline(), Some(t + Duration::from_millis(1600)));
    assert_eq!(m.history(), history);
    let (m, actions) = step(m, Event::Deadline, t + Duration::from_millis(1600));
    assert_eq!(without_notes(&actions), [Action::Spawn]);
    assert_eq!(m.restarts(), 8);
}

/// A process taken over keeps its uptime: its exit an hour later is that of a started
/// process (restarted at once), not a failed start.
#[test]
fn an_adopted_process_keeps_its_uptime() {
    let t = Instant::now();
    let m = new(Duty::Service);
    let (m, _) = step(m, Event::Start, t);
    let (mut m, _) = step(m, Event::Spawned { pid: 9 }, t);
    let hour = Duration::from_secs(3600);
    m.adopted(
        History {
            restarts: 2,
            failed_starts: 3,
            ..History::default()
        },
        t.checked_sub(hour),
    );
    assert_eq!(m.process().1, t.checked_sub(hour));
    assert_eq!(m.adoptable().map(|(pid, _)| pid), Some(9));
    let (m, actions) = step(m, Event::Exited("exit 1".into()), t + QUICK);
    assert!(
        without_notes(&actions).ends_with(&[Action::Spawn]),
        "{actions:?}"
    );
    assert_eq!(m.restarts(), 3);
}
