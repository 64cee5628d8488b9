//! Issue 10: property tests of the parsers that read what a push or a user sends (Procfile,
//! ENV, SCALING, cron schedules): any input gives a value or a list of problems, never a
//! panic, and what is accepted round-trips. Bounded: a fixed number of cases per property.

use std::collections::BTreeMap;

use piku_model::{
    CronSchedule, EnvMap, parse_env, parse_env_literal, parse_procfile, parse_scaling, render_env,
    render_scaling,
};
use proptest::prelude::*;

/// Lines made of what these formats care about (separators, `$`, quotes, comments), and
/// arbitrary text besides.
fn lines() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("web".to_string()),
        Just("cron".to_string()),
        Just(":".to_string()),
        Just("=".to_string()),
        Just("$".to_string()),
        Just("${".to_string()),
        Just("}".to_string()),
        Just("#".to_string()),
        Just("\"".to_string()),
        Just("'".to_string()),
        Just(" ".to_string()),
        Just("\n".to_string()),
        Just("*/5".to_string()),
        "[0-9]{1,12}",
        "[A-Za-z_]{1,8}",
        any::<String>(),
    ];
    proptest::collection::vec(piece, 0..40).prop_map(|p| p.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn procfiles_never_panic(text in lines()) {
        let _ = parse_procfile(&text);
    }

    #[test]
    fn env_files_never_panic_and_literal_ones_round_trip(text in lines()) {
        let mut env = EnvMap::new();
        let _ = parse_env(&text, &mut env);
        if let Ok(env) = parse_env_literal(&text) {
            prop_assert_eq!(parse_env_literal(&render_env(&env)).ok(), Some(env));
        }
    }

    #[test]
    fn scaling_files_never_panic_and_round_trip(text in lines()) {
        if let Ok(counts) = parse_scaling(&text) {
            prop_assert_eq!(parse_scaling(&render_scaling(&counts)).ok(), Some(counts));
        }
    }

    #[test]
    fn scaling_counts_round_trip(counts in proptest::collection::btree_map("[a-z][a-z0-9_-]{0,10}", 0u32..1000, 0..8)) {
        let counts: BTreeMap<String, u32> = counts;
        prop_assert_eq!(parse_scaling(&render_scaling(&counts)).ok(), Some(counts));
    }

    #[test]
    fn cron_schedules_never_panic_and_accepted_ones_have_a_next_run(text in lines()) {
        if let Ok(schedule) = CronSchedule::parse(&text) {
            let now = chrono::Utc::now();
            // Any accepted schedule either runs again or is one (Feb 30) that never does.
            let _ = schedule.next_after(&now);
        }
    }
}
