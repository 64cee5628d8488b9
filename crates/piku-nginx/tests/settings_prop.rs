//! Issue 10: property tests of the `NGINX_*` settings: any values give settings or a list of
//! problems, never a panic, and no accepted value can add a directive to the rendered config
//! (`NGINX_INCLUDE_FILE`, raw nginx text by design and checked by `nginx -t`, is left out).

use piku_model::{AppName, EnvMap, PikuRoot};
use piku_nginx::{NginxSettings, render};
use proptest::prelude::*;

const KEYS: &[&str] = &[
    "NGINX_SERVER_NAME",
    "NGINX_STATIC_PATHS",
    "NGINX_CATCH_ALL",
    "NGINX_CACHE_PREFIXES",
    "NGINX_CACHE_PATH",
    "NGINX_CACHE_TIME",
    "NGINX_HTTPS_ONLY",
    "NGINX_CLOUDFLARE_ACL",
    "NGINX_ALLOW_GIT_FOLDERS",
    "NGINX_HTTP_PORT",
    "NGINX_HTTPS_PORT",
    "NGINX_IPV4_ADDRESS",
    "NGINX_IPV6_ADDRESS",
    "DISABLE_IPV6",
];

/// Values built from what could break out of an nginx directive, and ordinary pieces.
fn value() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just(";".to_string()),
        Just("{".to_string()),
        Just("}".to_string()),
        Just("\n".to_string()),
        Just(" ".to_string()),
        Just("#".to_string()),
        Just("\"".to_string()),
        Just("'".to_string()),
        Just("$".to_string()),
        Just("\\".to_string()),
        Just(" evil_directive on".to_string()),
        Just("/".to_string()),
        Just(":".to_string()),
        Just(",".to_string()),
        Just("..".to_string()),
        Just("example.com".to_string()),
        Just("true".to_string()),
        "[0-9]{1,6}",
        "[a-z]{1,8}",
        any::<String>(),
    ];
    proptest::collection::vec(piece, 0..8).prop_map(|p| p.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn no_setting_can_add_a_directive(
        values in proptest::collection::vec((0..KEYS.len(), value()), 1..6),
        has_web in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let root = PikuRoot::new(dir.path());
        let app: AppName = "blog".parse().unwrap();
        let mut env = EnvMap::from([("NGINX_SERVER_NAME".to_string(), "blog.example".to_string())]);
        for (key, value) in values {
            env.insert(KEYS[key].to_string(), value);
        }
        if let Ok(Some(settings)) = NginxSettings::from_env(&app, &root, &env, has_web, None) {
            let conf = render(&settings);
            // A directive starts a statement: after `;`, `{`, `}` or a line break. Elsewhere
            // the word is only an argument (`server_name evil_directive on;` names two hosts).
            let added = conf
                .split([';', '{', '}', '\n'])
                .any(|statement| statement.split_whitespace().next() == Some("evil_directive"));
            prop_assert!(!added, "{env:?}\n{conf}");
        }
    }
}
