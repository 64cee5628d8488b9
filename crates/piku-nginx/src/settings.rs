//! piku's `NGINX_*` settings, parsed from an app's ENV into typed, validated values.
//!
//! Nothing here is pasted into the nginx config as raw text except `NGINX_INCLUDE_FILE`, whose
//! whole point is raw nginx directives (and which nginx itself validates with `nginx -t`).
//! Every other value is checked against what nginx can take unquoted, so an ENV value can
//! never add a directive. A bad value is an error naming the setting, never a silent default.
//!
//! Decisions where piku is loose or buggy (documented in the crate README of the report):
//! - Booleans take piku's true words (`1 on true enabled yes y`) and their opposites
//!   (`0 off false disabled no n`, empty); anything else is an error. `NGINX_ALLOW_GIT_FOLDERS`
//!   is a boolean too (piku: any non-empty value, even `false`, allowed `.git`).
//! - `NGINX_STATIC_PATHS`: relative paths resolve inside the app dir and may not contain `..`;
//!   an absolute path is accepted only if it is an existing directory inside the release or
//!   the app's `$DATA_ROOT` (piku users point these at `$DATA_ROOT` subdirectories). Either
//!   is resolved, symlinks included, and must stay inside: nginx would otherwise serve `/` or
//!   another app's secrets to the internet. The location and its alias agree on the trailing slash,
//!   which closes nginx's `alias` off-by-slash traversal.
//! - `NGINX_INCLUDE_FILE` must be a relative path inside the app dir.
//! - `NGINX_CACHE_PATH` that does not exist falls back to `cache/<app>` (created), with a
//!   warning; piku fell back to `None` and silently disabled the cache.
//! - `NGINX_CLOUDFLARE_ACL` allows Cloudflare's IPv4 *and* IPv6 ranges (piku added IPv6 only
//!   when IPv6 was disabled), from a bundled list: no network call at deploy time.
//!
//! Over 500 lines on purpose: one typed field and one check per `NGINX_*` setting, side by side,
//! so that every rule of what reaches the nginx config is in one place to audit.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Component, Path, PathBuf};

use piku_model::{AppName, EnvMap, FrontSettings, PikuRoot, Problems, expand_vars};

use crate::error::NginxError;
use crate::version::NginxFeatures;

/// Everything needed to render one app's nginx config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NginxSettings {
    pub app: AppName,
    pub root: PikuRoot,
    /// `server_name` values, in the order given; the first one is the "primary" name.
    pub server_names: Vec<String>,
    pub https_only: bool,
    /// `location <url> { alias <dir>; }` entries; the Procfile's `static:` one first.
    pub static_paths: Vec<StaticPath>,
    /// `NGINX_CATCH_ALL`: appended to the static locations' `try_files`.
    pub catch_all: Option<String>,
    pub allow_git_folders: bool,
    /// `NGINX_INCLUDE_FILE`'s content, `$VAR`-expanded against the app env.
    pub include: Option<String>,
    pub cache: Option<CacheSettings>,
    /// `NGINX_CLOUDFLARE_ACL`: the addresses allowed besides Cloudflare's ranges.
    pub cloudflare_acl: Option<Vec<IpAddr>>,
    pub listen: Listen,
    /// The app has a web process: `location /` proxies to the glue's socket.
    pub proxy: bool,
    /// The timeouts and body limit nginx must agree with the daemon's front on
    /// (`PIKU_RESPONSE_TIMEOUT`, `PIKU_KEEPALIVE_TIMEOUT`, `NGINX_CLIENT_MAX_BODY_SIZE`).
    pub front: FrontSettings,
    /// What the installed nginx supports (HTTP/2 style, `aio threads`). `from_env` leaves the
    /// conservative default; set it from [`crate::NginxCommand::features`].
    pub features: NginxFeatures,
    /// Things worth telling the user (`-----> ` lines) that are not errors.
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticPath {
    /// Starts with `/`; ends with `/` exactly when `dir` does.
    pub url: String,
    /// Absolute; ends with `/` exactly when `url` does.
    pub dir: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheSettings {
    /// Prefixes without their leading `/`, regex-escaped, for `~* ^/(a|b)`.
    pub prefixes: Vec<String>,
    pub path: PathBuf,
    pub size_gb: u64,
    pub time_content: u64,
    pub time_redirects: u64,
    pub time_any: u64,
    pub time_control: u64,
    pub time_expiry: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listen {
    /// An IPv4 literal or `*`.
    pub ipv4: String,
    /// `[addr]`, or `None` with `DISABLE_IPV6`.
    pub ipv6: Option<String>,
    pub http_port: u16,
    pub https_port: u16,
}

impl Default for Listen {
    fn default() -> Listen {
        Listen {
            ipv4: "0.0.0.0".into(),
            ipv6: Some("[::]".into()),
            http_port: 80,
            https_port: 443,
        }
    }
}

/// Every problem of an app's `NGINX_*` settings, each naming its setting.
pub type SettingsErrors = Problems<NginxError>;

/// Gathers the problems of independent settings so all of them are reported at once.
#[derive(Default)]
struct Found(Vec<NginxError>);

impl Found {
    /// The value, or `None` with its problem noted.
    fn ok<T>(&mut self, result: Result<T, NginxError>) -> Option<T> {
        result.map_err(|problem| self.0.push(problem)).ok()
    }

    /// The value, or `default` with its problem noted (when a later check needs some value).
    fn or<T>(&mut self, result: Result<T, NginxError>, default: T) -> T {
        self.ok(result).unwrap_or(default)
    }
}

impl NginxSettings {
    /// Reads piku's nginx settings from `env`. `Ok(None)` when `NGINX_SERVER_NAME` is unset or
    /// empty: as in piku, such an app gets no nginx config. `has_web`: the app runs a web (or
    /// wsgi) process. `static_paths_from_procfile`: the command of a `static:` Procfile entry.
    /// An error lists every setting that is wrong.
    ///
    /// Reads `NGINX_INCLUDE_FILE` from the app dir and, once every setting is valid, creates
    /// the default cache dir when caching is on; nothing else touches the disk.
    pub fn from_env(
        app: &AppName,
        root: &PikuRoot,
        env: &EnvMap,
        has_web: bool,
        static_paths_from_procfile: Option<&str>,
    ) -> Result<Option<NginxSettings>, SettingsErrors> {
        let app_dir = root.app_dir(app);
        NginxSettings::from_env_for_checkout(
            app,
            root,
            env,
            has_web,
            static_paths_from_procfile,
            &app_dir,
        )
    }

    /// [`NginxSettings::from_env`] for a release that is not live yet: `NGINX_INCLUDE_FILE` is
    /// read from `checkout` (the new release's files) instead of `apps/<app>`, which still
    /// points at the old release (or does not exist before the first deploy). Static paths
    /// still map under `apps/<app>`, so they follow the release that is live.
    pub fn from_env_for_checkout(
        app: &AppName,
        root: &PikuRoot,
        env: &EnvMap,
        has_web: bool,
        static_paths_from_procfile: Option<&str>,
        checkout: &Path,
    ) -> Result<Option<NginxSettings>, SettingsErrors> {
        let mut found = Found::default();
        let server_names = parse_server_names(env.get("NGINX_SERVER_NAME"), &mut found);
        if server_names.is_empty() && found.0.is_empty() {
            return Ok(None);
        }
        // The root appears unquoted in paths of the config (certificates, socket, webroot).
        found.ok(check_token("PIKU_ROOT", &root.path().to_string_lossy()));
        let app_dir = root.app_dir(app);
        let mut warnings = Vec::new();

        let confine = Confine {
            checkout,
            data: root.data_dir(app),
        };
        let static_paths = static_paths(
            env,
            has_web,
            static_paths_from_procfile,
            &app_dir,
            &confine,
            &mut found,
        );
        let catch_all = found.ok(parse_catch_all(env)).flatten();
        let include = found.ok(read_include(env, checkout)).flatten();
        let cache = parse_cache(app, root, env, has_web, &mut warnings, &mut found);
        let cloudflare_acl = if found.or(parse_bool(env, "NGINX_CLOUDFLARE_ACL"), false) {
            Some(cloudflare_allowed(env, &mut warnings))
        } else {
            None
        };
        let listen = parse_listen(env, &mut found);
        let https_only = found.or(parse_bool(env, "NGINX_HTTPS_ONLY"), false);
        let allow_git_folders = found.or(parse_bool(env, "NGINX_ALLOW_GIT_FOLDERS"), false);
        let front = FrontSettings::from_env(env).unwrap_or_else(|problems| {
            for problem in problems.into_vec() {
                found.0.push(NginxError::setting(
                    problem.key,
                    format!("'{}' {}", problem.value, problem.why),
                ));
            }
            FrontSettings::default()
        });

        if let Some(cache) = &cache
            && found.0.is_empty()
        {
            found.ok(std::fs::create_dir_all(&cache.path).map_err(NginxError::io(&cache.path)));
        }
        Problems::check(
            Some(NginxSettings {
                app: app.clone(),
                root: root.clone(),
                server_names,
                https_only,
                static_paths,
                catch_all,
                allow_git_folders,
                include,
                cache,
                cloudflare_acl,
                listen,
                proxy: has_web,
                front,
                features: NginxFeatures::default(),
                warnings,
            }),
            found.0,
        )
    }

    /// `nginx/<app>.conf`
    pub fn conf_path(&self) -> PathBuf {
        conf_path(&self.root, &self.app)
    }
    /// `nginx/<app>.sock`: the glue's HTTP front that `location /` proxies to.
    pub fn socket_path(&self) -> PathBuf {
        socket_path(&self.root, &self.app)
    }
    /// `nginx/<app>.crt`
    pub fn crt_path(&self) -> PathBuf {
        crt_path(&self.root, &self.app)
    }
    /// `nginx/<app>.key`
    pub fn key_path(&self) -> PathBuf {
        key_path(&self.root, &self.app)
    }
}

/// `nginx/<app>.conf` ([`PikuRoot::nginx_conf`]).
pub fn conf_path(root: &PikuRoot, app: &AppName) -> PathBuf {
    root.nginx_conf(app)
}
/// `nginx/<app>.sock` ([`PikuRoot::nginx_socket`]).
pub fn socket_path(root: &PikuRoot, app: &AppName) -> PathBuf {
    root.nginx_socket(app)
}
/// `nginx/<app>.crt` ([`PikuRoot::nginx_crt`]).
pub fn crt_path(root: &PikuRoot, app: &AppName) -> PathBuf {
    root.nginx_crt(app)
}
/// `nginx/<app>.key` ([`PikuRoot::nginx_key`]).
pub fn key_path(root: &PikuRoot, app: &AppName) -> PathBuf {
    root.nginx_key(app)
}

/// The Procfile's `static:` mapping (at `/`), then `NGINX_STATIC_PATHS`, each URL once, none
/// at `/` when a web process owns it. Bad items are noted and left out.
fn static_paths(
    env: &EnvMap,
    has_web: bool,
    from_procfile: Option<&str>,
    app_dir: &Path,
    confine: &Confine,
    found: &mut Found,
) -> Vec<StaticPath> {
    // (setting, path): the setting a problem with the path is reported under.
    let mut paths: Vec<(&'static str, StaticPath)> = Vec::new();
    if let Some(command) = from_procfile
        && let Some(path) = found.ok(procfile_static_path(command, app_dir, confine))
    {
        paths.push(("static", path));
    }
    if let Some(spec) = non_empty(env, "NGINX_STATIC_PATHS") {
        for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            if let Some(path) = found.ok(parse_static_path(item, app_dir, confine)) {
                paths.push(("NGINX_STATIC_PATHS", path));
            }
        }
    }
    let mut kept: Vec<StaticPath> = Vec::new();
    for (setting, path) in paths {
        if kept.iter().any(|p| p.url == path.url) {
            found.0.push(NginxError::setting(
                "NGINX_STATIC_PATHS",
                format!("'{}' is mapped twice", path.url),
            ));
        } else if has_web && path.url == "/" {
            found.0.push(NginxError::setting(
                setting,
                "'/' is served by the web process; map static files under a prefix",
            ));
        } else {
            kept.push(path);
        }
    }
    kept
}

fn parse_catch_all(env: &EnvMap) -> Result<Option<String>, NginxError> {
    let Some(v) = non_empty(env, "NGINX_CATCH_ALL") else {
        return Ok(None);
    };
    check_token("NGINX_CATCH_ALL", v)?;
    if !(v.starts_with('/') || v.starts_with('@')) {
        return Err(NginxError::setting(
            "NGINX_CATCH_ALL",
            format!("'{v}' must be a URI starting with '/' or a named location '@…'"),
        ));
    }
    Ok(Some(v.to_owned()))
}

/// `NGINX_INCLUDE_FILE`'s text from `checkout`, `$VAR`-expanded against the app env.
fn read_include(env: &EnvMap, checkout: &Path) -> Result<Option<String>, NginxError> {
    let Some(file) = non_empty(env, "NGINX_INCLUDE_FILE") else {
        return Ok(None);
    };
    let rel = relative_inside("NGINX_INCLUDE_FILE", file)?;
    let path = checkout.join(rel);
    let cannot = |e: String| {
        NginxError::setting(
            "NGINX_INCLUDE_FILE",
            format!("cannot read '{}': {e}", path.display()),
        )
    };
    // Only a regular file inside the checkout, symlinks resolved.
    let bytes = piku_fs::read_inside(checkout, rel)
        .map_err(|e| cannot(e.to_string()))?
        .ok_or_else(|| cannot("no such file".into()))?;
    let text = String::from_utf8(bytes).map_err(|_| cannot("not UTF-8 text".into()))?;
    Ok(Some(expand_vars(&text, env)))
}

/// `NGINX_CLOUDFLARE_ACL`'s allow-list besides Cloudflare's ranges: loopback and the deployer.
fn cloudflare_allowed(env: &EnvMap, warnings: &mut Vec<String>) -> Vec<IpAddr> {
    let mut allowed = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
    let ssh_client = env
        .get("SSH_CLIENT")
        .cloned()
        .or_else(|| std::env::var("SSH_CLIENT").ok());
    if let Some(ssh_client) = ssh_client {
        let first = ssh_client.split_whitespace().next().unwrap_or("");
        match first.parse::<IpAddr>() {
            Ok(ip) if !allowed.contains(&ip) => allowed.push(ip),
            Ok(_) => {}
            Err(_) => warnings.push(format!(
                "NGINX_CLOUDFLARE_ACL: SSH_CLIENT '{ssh_client}' has no IP address; not added to the allow-list"
            )),
        }
    }
    allowed
}

fn non_empty<'a>(env: &'a EnvMap, key: &str) -> Option<&'a str> {
    env.get(key).map(|v| v.trim()).filter(|v| !v.is_empty())
}

/// piku's `get_boolean` words, plus their opposites; anything else is refused.
fn parse_bool(env: &EnvMap, setting: &'static str) -> Result<bool, NginxError> {
    let Some(value) = env.get(setting) else {
        return Ok(false);
    };
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "on" | "true" | "enabled" | "yes" | "y" => Ok(true),
        "" | "0" | "off" | "false" | "disabled" | "no" | "n" => Ok(false),
        _ => Err(NginxError::setting(
            setting,
            format!("'{value}' is not a boolean (use true or false)"),
        )),
    }
}

fn parse_number(
    env: &EnvMap,
    setting: &'static str,
    default: u64,
    min: u64,
) -> Result<u64, NginxError> {
    let Some(value) = non_empty(env, setting) else {
        return Ok(default);
    };
    match value.parse::<u64>() {
        Ok(n) if n >= min && n <= 10u64.pow(12) => Ok(n),
        _ => Err(NginxError::setting(
            setting,
            format!("'{value}' is not a whole number of at least {min}"),
        )),
    }
}

/// Characters nginx would need quoting for (or that would end a directive) are refused in
/// every value we place unquoted.
fn check_token(setting: &'static str, value: &str) -> Result<(), NginxError> {
    if let Some(bad) = value
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || ";{}\"'$\\#".contains(*c))
    {
        return Err(NginxError::setting(
            setting,
            format!("'{value}' contains {bad:?}, which nginx cannot take unquoted"),
        ));
    }
    Ok(())
}

/// The server names in order, each once; bad ones are noted and left out.
fn parse_server_names(value: Option<&String>, found: &mut Found) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let Some(value) = value else {
        return names;
    };
    for name in value.split(|c: char| c == ',' || c.is_whitespace()) {
        if name.is_empty() || names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            continue;
        }
        if found.ok(check_server_name(name)).is_some() {
            names.push(name.to_owned());
        }
    }
    names
}

/// A host name, `*.name` / `.name` (nginx wildcards), or `_` (matches nothing, used for
/// catch-all servers). Labels: 1–63 of `[A-Za-z0-9_-]`, not starting or ending with `-`.
fn check_server_name(name: &str) -> Result<(), NginxError> {
    let bad = |why: &str| {
        Err(NginxError::setting(
            "NGINX_SERVER_NAME",
            format!("'{name}' is not a host name: {why}"),
        ))
    };
    if name == "_" {
        return Ok(());
    }
    let host = name
        .strip_prefix("*.")
        .or_else(|| name.strip_prefix('.'))
        .unwrap_or(name);
    if host.len() > 253 {
        return bad("longer than 253 characters");
    }
    for label in host.split('.') {
        if label.is_empty() {
            return bad("empty label");
        }
        if label.len() > 63 {
            return bad("a label is longer than 63 characters");
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return bad(&format!("{c:?} is not allowed"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("a label starts or ends with '-'");
        }
    }
    Ok(())
}

/// A relative path made only of normal components (no `..`, no root).
fn relative_inside<'a>(setting: &'static str, path: &'a str) -> Result<&'a Path, NginxError> {
    let p = Path::new(path);
    for component in p.components() {
        match component {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => {
                return Err(NginxError::setting(
                    setting,
                    format!("'{path}' leaves the app directory ('..')"),
                ));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(NginxError::setting(
                    setting,
                    format!("'{path}' must be relative to the app directory"),
                ));
            }
        }
    }
    Ok(p)
}

/// Where an app's static files may come from: its release (the checkout being deployed)
/// and its own `$DATA_ROOT`, after symlinks are resolved.
struct Confine<'a> {
    checkout: &'a Path,
    data: PathBuf,
}

impl Confine<'_> {
    /// `dir` (a relative static path joined to the checkout when `relative`) resolved must
    /// lie inside the checkout, or for an absolute path inside the checkout or the data dir.
    /// A relative path that does not exist yet serves nothing and passes.
    fn check(
        &self,
        setting: &'static str,
        shown: &str,
        dir: &Path,
        relative: bool,
    ) -> Result<(), NginxError> {
        let resolved = match dir.canonicalize() {
            Ok(path) => path,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && relative => return Ok(()),
            Err(e) => {
                return Err(NginxError::setting(
                    setting,
                    format!("cannot resolve '{shown}': {e}"),
                ));
            }
        };
        let inside = |base: &Path| base.canonicalize().is_ok_and(|b| resolved.starts_with(b));
        if inside(self.checkout) || (!relative && inside(&self.data)) {
            return Ok(());
        }
        let allowed = if relative {
            "the release"
        } else {
            "the release and the app's DATA_ROOT"
        };
        Err(NginxError::setting(
            setting,
            format!("'{shown}' leads outside {allowed} (symlinks resolved)"),
        ))
    }
}

fn procfile_static_path(
    command: &str,
    app_dir: &Path,
    confine: &Confine,
) -> Result<StaticPath, NginxError> {
    // piku: strip slashes, tolerate a leading ':', empty means the app dir itself.
    let stripped = command.trim().trim_matches('/');
    let stripped = stripped.strip_prefix(':').unwrap_or(stripped);
    let path = if stripped.is_empty() { "." } else { stripped };
    check_token("static", path)?;
    let rel = relative_inside("static", path)?;
    confine.check("static", path, &confine.checkout.join(rel), true)?;
    Ok(StaticPath {
        url: "/".into(),
        dir: dir_with_slash(&app_dir.join(rel), true),
    })
}

/// One `/url:path` item of `NGINX_STATIC_PATHS`.
fn parse_static_path(
    item: &str,
    app_dir: &Path,
    confine: &Confine,
) -> Result<StaticPath, NginxError> {
    const S: &str = "NGINX_STATIC_PATHS";
    let Some((url, path)) = item.split_once(':') else {
        return Err(NginxError::setting(S, format!("'{item}' is not /url:path")));
    };
    check_token(S, url)?;
    check_token(S, path)?;
    if !url.starts_with('/') {
        return Err(NginxError::setting(
            S,
            format!("'{url}' must start with '/'"),
        ));
    }
    if path.is_empty() || path.contains(':') {
        return Err(NginxError::setting(S, format!("'{item}' is not /url:path")));
    }
    let slash = url.ends_with('/');
    let dir = if path.starts_with('/') {
        let p = Path::new(path);
        if p.components().any(|c| c == Component::ParentDir) {
            return Err(NginxError::setting(S, format!("'{path}' contains '..'")));
        }
        if !p.is_dir() {
            return Err(NginxError::setting(
                S,
                format!("absolute path '{path}' is not an existing directory"),
            ));
        }
        confine.check(S, path, p, false)?;
        dir_with_slash(p, slash)
    } else {
        let rel = relative_inside(S, path)?;
        confine.check(S, path, &confine.checkout.join(rel), true)?;
        dir_with_slash(&app_dir.join(rel), slash)
    };
    Ok(StaticPath {
        url: url.to_owned(),
        dir,
    })
}

/// The path as text, with exactly one trailing `/` when `slash`, none otherwise; `.`
/// components dropped so `app/./public` reads `app/public`.
fn dir_with_slash(path: &Path, slash: bool) -> String {
    let clean: PathBuf = path
        .components()
        .filter(|c| *c != Component::CurDir)
        .collect();
    let mut text = clean.to_string_lossy().trim_end_matches('/').to_owned();
    if slash || text.is_empty() {
        text.push('/');
    }
    text
}

/// The cache settings when `NGINX_CACHE_PREFIXES` asks for a cache; the directory is not
/// created here (see [`NginxSettings::from_env`]).
fn parse_cache(
    app: &AppName,
    root: &PikuRoot,
    env: &EnvMap,
    has_web: bool,
    warnings: &mut Vec<String>,
    found: &mut Found,
) -> Option<CacheSettings> {
    // Validate every number even when caching is off: a typo should not wait for the day
    // someone turns the cache on.
    let mut number = |setting, default, min| found.or(parse_number(env, setting, default, min), 0);
    let size_gb = number("NGINX_CACHE_SIZE", 1, 1);
    let time_content = number("NGINX_CACHE_TIME", 3600, 0);
    let time_redirects = number("NGINX_CACHE_REDIRECTS", 3600, 0);
    let time_any = number("NGINX_CACHE_ANY", 3600, 0);
    let time_control = number("NGINX_CACHE_CONTROL", 3600, 0);
    let time_expiry = number("NGINX_CACHE_EXPIRY", 86400, 1);

    let mut prefixes = Vec::new();
    if let Some(spec) = non_empty(env, "NGINX_CACHE_PREFIXES") {
        for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let prefix = item.strip_prefix('/').unwrap_or(item);
            if prefix.is_empty()
                || !prefix
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._~/-".contains(c))
            {
                found.0.push(NginxError::setting(
                    "NGINX_CACHE_PREFIXES",
                    format!("'{item}' is not a URL prefix of [A-Za-z0-9._~/-]"),
                ));
                continue;
            }
            prefixes.push(prefix.replace('.', "\\."));
        }
    }
    if prefixes.is_empty() {
        return None;
    }
    if !has_web {
        warnings.push("NGINX_CACHE_PREFIXES: the app has no web process; no cache".into());
        return None;
    }
    let path = found.ok(cache_path(app, root, env, warnings))?;
    Some(CacheSettings {
        prefixes,
        path,
        size_gb,
        time_content,
        time_redirects,
        time_any,
        time_control,
        time_expiry,
    })
}

/// `NGINX_CACHE_PATH` if it is an existing directory, else `cache/<app>` (with a warning when
/// the setting named a missing one).
fn cache_path(
    app: &AppName,
    root: &PikuRoot,
    env: &EnvMap,
    warnings: &mut Vec<String>,
) -> Result<PathBuf, NginxError> {
    let default_path = root.cache_dir(app);
    let path = match non_empty(env, "NGINX_CACHE_PATH") {
        Some(p) => {
            check_token("NGINX_CACHE_PATH", p)?;
            let p = Path::new(p);
            if !p.is_absolute() {
                return Err(NginxError::setting(
                    "NGINX_CACHE_PATH",
                    format!("'{}' must be an absolute path", p.display()),
                ));
            }
            if p.is_dir() {
                p.to_path_buf()
            } else {
                warnings.push(format!(
                    "NGINX_CACHE_PATH '{}' does not exist; using {}",
                    p.display(),
                    default_path.display()
                ));
                default_path
            }
        }
        None => default_path,
    };
    check_token("NGINX_CACHE_PATH", &path.to_string_lossy())?;
    Ok(path)
}

fn parse_port(env: &EnvMap, setting: &'static str, default: u16) -> Result<u16, NginxError> {
    let Some(value) = non_empty(env, setting) else {
        return Ok(default);
    };
    match value.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(NginxError::setting(
            setting,
            format!("'{value}' is not a port (1-65535)"),
        )),
    }
}

fn parse_listen(env: &EnvMap, found: &mut Found) -> Listen {
    let defaults = Listen::default();
    let ipv4 = found.or(parse_ipv4(env), defaults.ipv4);
    let ipv6 = if found.or(parse_bool(env, "DISABLE_IPV6"), false) {
        None
    } else {
        found.or(parse_ipv6(env).map(Some), defaults.ipv6)
    };
    let http_port = found.or(parse_port(env, "NGINX_HTTP_PORT", 80), defaults.http_port);
    let https_port = found.or(
        parse_port(env, "NGINX_HTTPS_PORT", 443),
        defaults.https_port,
    );
    if http_port == https_port {
        found.0.push(NginxError::setting(
            "NGINX_HTTPS_PORT",
            format!("{https_port} is also NGINX_HTTP_PORT"),
        ));
    }
    Listen {
        ipv4,
        ipv6,
        http_port,
        https_port,
    }
}

fn parse_ipv4(env: &EnvMap) -> Result<String, NginxError> {
    match non_empty(env, "NGINX_IPV4_ADDRESS") {
        None => Ok("0.0.0.0".to_owned()),
        Some("*") => Ok("*".to_owned()),
        Some(v) => v.parse::<Ipv4Addr>().map(|ip| ip.to_string()).map_err(|_| {
            NginxError::setting(
                "NGINX_IPV4_ADDRESS",
                format!("'{v}' is not an IPv4 address"),
            )
        }),
    }
}

fn parse_ipv6(env: &EnvMap) -> Result<String, NginxError> {
    let Some(v) = non_empty(env, "NGINX_IPV6_ADDRESS") else {
        return Ok("[::]".to_owned());
    };
    let inner = v
        .strip_prefix('[')
        .and_then(|v| v.strip_suffix(']'))
        .unwrap_or(v);
    inner
        .parse::<Ipv6Addr>()
        .map(|ip| format!("[{ip}]"))
        .map_err(|_| {
            NginxError::setting(
                "NGINX_IPV6_ADDRESS",
                format!("'{v}' is not an IPv6 address"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> AppName {
        "blog".parse().unwrap()
    }

    fn env(pairs: &[(&str, &str)]) -> EnvMap {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn parse(pairs: &[(&str, &str)]) -> Result<Option<NginxSettings>, SettingsErrors> {
        NginxSettings::from_env(&app(), &PikuRoot::new("/r"), &env(pairs), true, None)
    }

    fn ok(pairs: &[(&str, &str)]) -> NginxSettings {
        parse(pairs).unwrap().unwrap()
    }

    fn err(pairs: &[(&str, &str)]) -> String {
        parse(pairs).unwrap_err().to_string()
    }

    const NAME: (&str, &str) = ("NGINX_SERVER_NAME", "blog.example.com");

    #[test]
    fn no_server_name_no_config() {
        assert_eq!(parse(&[]).unwrap(), None);
        assert_eq!(parse(&[("NGINX_SERVER_NAME", " , ")]).unwrap(), None);
    }

    #[test]
    fn a_root_nginx_cannot_take_unquoted_is_refused() {
        let e = NginxSettings::from_env(
            &app(),
            &PikuRoot::new("/home/my user/.piku"),
            &env(&[NAME]),
            true,
            None,
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("PIKU_ROOT: "), "{e}");
    }

    #[test]
    fn defaults_follow_piku() {
        let s = ok(&[NAME]);
        assert_eq!(s.server_names, ["blog.example.com"]);
        assert!(!s.https_only && !s.allow_git_folders && s.proxy);
        assert_eq!(s.listen, Listen::default());
        assert!(s.static_paths.is_empty() && s.cache.is_none() && s.cloudflare_acl.is_none());
        assert_eq!(s.conf_path(), Path::new("/r/nginx/blog.conf"));
        assert_eq!(s.socket_path(), Path::new("/r/nginx/blog.sock"));
    }

    #[test]
    fn server_names_split_on_commas_and_spaces() {
        let s = ok(&[(
            "NGINX_SERVER_NAME",
            "a.example,www.a.example b.example *.c.example _ a.example",
        )]);
        assert_eq!(
            s.server_names,
            [
                "a.example",
                "www.a.example",
                "b.example",
                "*.c.example",
                "_"
            ]
        );
    }

    #[test]
    fn bad_server_names_are_refused() {
        for bad in [
            "a;b",
            "exa mple{",
            "a..b",
            "-a.example",
            "a.example/x",
            "$host",
            "*.",
            "ä.example",
        ] {
            let e = err(&[("NGINX_SERVER_NAME", bad)]);
            assert!(e.starts_with("NGINX_SERVER_NAME: "), "{bad}: {e}");
        }
        let long = "a".repeat(64);
        assert!(err(&[("NGINX_SERVER_NAME", &long)]).contains("63"));
    }

    #[test]
    fn booleans_take_piku_words_and_refuse_others() {
        assert!(ok(&[NAME, ("NGINX_HTTPS_ONLY", "Yes")]).https_only);
        assert!(ok(&[NAME, ("NGINX_HTTPS_ONLY", "1")]).https_only);
        assert!(!ok(&[NAME, ("NGINX_HTTPS_ONLY", "off")]).https_only);
        assert_eq!(
            err(&[NAME, ("NGINX_HTTPS_ONLY", "maybe")]),
            "NGINX_HTTPS_ONLY: 'maybe' is not a boolean (use true or false)"
        );
        // piku allowed .git for any non-empty value, even "false".
        assert!(!ok(&[NAME, ("NGINX_ALLOW_GIT_FOLDERS", "false")]).allow_git_folders);
        assert!(ok(&[NAME, ("NGINX_ALLOW_GIT_FOLDERS", "true")]).allow_git_folders);
        assert!(err(&[NAME, ("DISABLE_IPV6", "nope")]).starts_with("DISABLE_IPV6:"));
        assert!(err(&[NAME, ("NGINX_CLOUDFLARE_ACL", "2")]).starts_with("NGINX_CLOUDFLARE_ACL:"));
    }

    #[test]
    fn static_paths_resolve_inside_the_app() {
        let s = ok(&[
            NAME,
            ("NGINX_STATIC_PATHS", "/static/:public,/media:./media/up/"),
        ]);
        assert_eq!(
            s.static_paths,
            [
                StaticPath {
                    url: "/static/".into(),
                    dir: "/r/apps/blog/public/".into()
                },
                StaticPath {
                    url: "/media".into(),
                    dir: "/r/apps/blog/media/up".into()
                },
            ]
        );
    }

    #[test]
    fn static_paths_refuse_escapes_and_junk() {
        let e = err(&[NAME, ("NGINX_STATIC_PATHS", "/s:../secret")]);
        assert_eq!(
            e,
            "NGINX_STATIC_PATHS: '../secret' leaves the app directory ('..')"
        );
        let e = err(&[NAME, ("NGINX_STATIC_PATHS", "/s:/definitely/not/here")]);
        assert!(e.contains("not an existing directory"), "{e}");
        assert!(
            err(&[NAME, ("NGINX_STATIC_PATHS", "static:public")]).contains("must start with '/'")
        );
        assert!(err(&[NAME, ("NGINX_STATIC_PATHS", "/s")]).contains("is not /url:path"));
        assert!(err(&[NAME, ("NGINX_STATIC_PATHS", "/s:a:b")]).contains("is not /url:path"));
        assert!(err(&[NAME, ("NGINX_STATIC_PATHS", "/s:pub;lic")]).contains("';'"));
        assert!(err(&[NAME, ("NGINX_STATIC_PATHS", "/s:a,/s:b")]).contains("mapped twice"));
        assert!(err(&[NAME, ("NGINX_STATIC_PATHS", "/:public")]).contains("web process"));
    }

    #[test]
    fn absolute_static_path_must_exist() {
        let tmp = tempfile::tempdir().unwrap();
        let root = PikuRoot::new(tmp.path());
        let uploads = root.data_dir(&app()).join("uploads");
        std::fs::create_dir_all(&uploads).unwrap();
        let spec = format!("/up/:{}", uploads.display());
        let s = confined(&root, &spec, None).unwrap();
        assert_eq!(s.static_paths[0].dir, format!("{}/", uploads.display()));
    }

    /// `NGINX_STATIC_PATHS` (and `static:`) of `root`'s app `blog`, checked against a
    /// checkout in `root/releases/blog/v1/src`.
    fn confined(
        root: &PikuRoot,
        static_paths: &str,
        procfile_static: Option<&str>,
    ) -> Result<NginxSettings, String> {
        let checkout = root.release_dir(&app()).join("v1").join("src");
        std::fs::create_dir_all(&checkout).unwrap();
        let env = env(&[NAME, ("NGINX_STATIC_PATHS", static_paths)]);
        NginxSettings::from_env_for_checkout(
            &app(),
            root,
            &env,
            procfile_static.is_none(),
            procfile_static,
            &checkout,
        )
        .map(Option::unwrap)
        .map_err(|e| e.to_string())
    }

    /// Issue 10 item 8: static paths never reach outside the release or the app's data:
    /// not `/`, not `$PIKU_ROOT`, not a committed symlink to `/`.
    #[test]
    fn static_paths_stay_inside_the_release_and_data() {
        let tmp = tempfile::tempdir().unwrap();
        let root = PikuRoot::new(tmp.path().join("piku"));
        let checkout = root.release_dir(&app()).join("v1").join("src");
        std::fs::create_dir_all(checkout.join("public")).unwrap();
        std::fs::create_dir_all(root.env_dir(&app())).unwrap();
        std::os::unix::fs::symlink("/", checkout.join("escape")).unwrap();
        std::os::unix::fs::symlink("/etc", root.path().join("etc-link")).unwrap();
        let outside = |spec: &str| {
            let e = confined(&root, spec, None).unwrap_err();
            assert!(e.contains("leads outside"), "{spec}: {e}");
        };
        outside("/u:/");
        outside(&format!("/u:{}", root.path().display()));
        outside(&format!(
            "/u:{}",
            root.env_dir(&app()).parent().unwrap().display()
        ));
        outside("/u:escape");
        outside("/u:escape/etc");
        outside(&format!("/u:{}/etc-link", root.path().display()));
        assert!(confined(&root, "/u:public", None).is_ok());
        assert!(confined(&root, "/u:not-built-yet", None).is_ok());
        let e = confined(&root, "/u:public", Some("escape")).unwrap_err();
        assert!(
            e.contains("static: 'escape' leads outside the release"),
            "{e}"
        );
    }

    #[test]
    fn procfile_static_is_prepended_at_root() {
        let s = NginxSettings::from_env(
            &app(),
            &PikuRoot::new("/r"),
            &env(&[NAME, ("NGINX_STATIC_PATHS", "/docs/:doc")]),
            false,
            Some("/public/"),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            s.static_paths[0],
            StaticPath {
                url: "/".into(),
                dir: "/r/apps/blog/public/".into()
            }
        );
        assert_eq!(s.static_paths[1].url, "/docs/");
        let s =
            NginxSettings::from_env(&app(), &PikuRoot::new("/r"), &env(&[NAME]), false, Some(""))
                .unwrap()
                .unwrap();
        assert_eq!(s.static_paths[0].dir, "/r/apps/blog/");
        let e = NginxSettings::from_env(
            &app(),
            &PikuRoot::new("/r"),
            &env(&[NAME]),
            false,
            Some("../x"),
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("static: "), "{e}");
        // A web process owns `/`: the Procfile's static mapping cannot take it too.
        let e = NginxSettings::from_env(
            &app(),
            &PikuRoot::new("/r"),
            &env(&[NAME]),
            true,
            Some("public"),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "static: '/' is served by the web process; map static files under a prefix"
        );
    }

    #[test]
    fn catch_all_is_a_uri_or_named_location() {
        assert_eq!(
            ok(&[NAME, ("NGINX_CATCH_ALL", "/index.html")])
                .catch_all
                .as_deref(),
            Some("/index.html")
        );
        assert_eq!(
            ok(&[NAME, ("NGINX_CATCH_ALL", "@app")])
                .catch_all
                .as_deref(),
            Some("@app")
        );
        assert!(err(&[NAME, ("NGINX_CATCH_ALL", "index.html")]).starts_with("NGINX_CATCH_ALL:"));
        assert!(err(&[NAME, ("NGINX_CATCH_ALL", "/a =200;")]).starts_with("NGINX_CATCH_ALL:"));
    }

    #[test]
    fn include_file_is_read_and_expanded() {
        let tmp = tempfile::tempdir().unwrap();
        let root = PikuRoot::new(tmp.path());
        std::fs::create_dir_all(root.app_dir(&app())).unwrap();
        std::fs::write(
            root.app_dir(&app()).join("extra.conf"),
            "client_max_body_size $MAX_BODY;\nset $x 1;\n",
        )
        .unwrap();
        let e = env(&[
            NAME,
            ("NGINX_INCLUDE_FILE", "extra.conf"),
            ("MAX_BODY", "20m"),
        ]);
        let s = NginxSettings::from_env(&app(), &root, &e, true, None)
            .unwrap()
            .unwrap();
        assert_eq!(
            s.include.as_deref(),
            Some("client_max_body_size 20m;\nset $x 1;\n")
        );

        let e = env(&[NAME, ("NGINX_INCLUDE_FILE", "missing.conf")]);
        let err = NginxSettings::from_env(&app(), &root, &e, true, None)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("NGINX_INCLUDE_FILE: cannot read"), "{err}");
        assert!(!err.contains('\n'));
        let e = env(&[NAME, ("NGINX_INCLUDE_FILE", "/etc/passwd")]);
        let err = NginxSettings::from_env(&app(), &root, &e, true, None)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "NGINX_INCLUDE_FILE: '/etc/passwd' must be relative to the app directory"
        );
    }

    #[test]
    fn cache_settings_and_their_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let root = PikuRoot::new(tmp.path());
        let parse = |pairs: &[(&str, &str)]| {
            NginxSettings::from_env(&app(), &root, &env(pairs), true, None)
        };
        let s = parse(&[
            NAME,
            ("NGINX_CACHE_PREFIXES", "/api,/img.v2"),
            ("NGINX_CACHE_TIME", "60"),
        ])
        .unwrap()
        .unwrap();
        let c = s.cache.unwrap();
        assert_eq!(c.prefixes, ["api", "img\\.v2"]);
        assert_eq!(
            (
                c.size_gb,
                c.time_content,
                c.time_redirects,
                c.time_any,
                c.time_control,
                c.time_expiry
            ),
            (1, 60, 3600, 3600, 3600, 86400)
        );
        assert_eq!(c.path, root.cache_dir(&app()));
        assert!(c.path.is_dir(), "default cache dir is created");

        // piku's fallback bug: a missing path now falls back to cache/<app>, with a warning.
        let s = parse(&[
            NAME,
            ("NGINX_CACHE_PREFIXES", "/api"),
            ("NGINX_CACHE_PATH", "/no/such/dir"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(s.cache.unwrap().path, root.cache_dir(&app()));
        assert!(s.warnings[0].contains("/no/such/dir"));

        for (key, value) in [
            ("NGINX_CACHE_SIZE", "0"),
            ("NGINX_CACHE_SIZE", "1g"),
            ("NGINX_CACHE_TIME", "-1"),
            ("NGINX_CACHE_REDIRECTS", "soon"),
            ("NGINX_CACHE_ANY", "1.5"),
            ("NGINX_CACHE_CONTROL", "x"),
            ("NGINX_CACHE_EXPIRY", "0"),
        ] {
            let e = parse(&[NAME, (key, value)]).unwrap_err().to_string();
            assert!(e.starts_with(&format!("{key}: '{value}'")), "{e}");
        }
        let e = parse(&[NAME, ("NGINX_CACHE_PREFIXES", "/a|b")])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("NGINX_CACHE_PREFIXES:"), "{e}");
        let e = parse(&[
            NAME,
            ("NGINX_CACHE_PREFIXES", "/a"),
            ("NGINX_CACHE_PATH", "rel"),
        ])
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("NGINX_CACHE_PATH:"), "{e}");
    }

    #[test]
    fn cache_needs_a_web_process() {
        let s = NginxSettings::from_env(
            &app(),
            &PikuRoot::new("/r"),
            &env(&[NAME, ("NGINX_CACHE_PREFIXES", "/a")]),
            false,
            None,
        )
        .unwrap()
        .unwrap();
        assert!(s.cache.is_none());
        assert!(s.warnings[0].contains("no web process"));
    }

    #[test]
    fn cloudflare_acl_adds_loopback_and_the_deployer() {
        let s = ok(&[
            NAME,
            ("NGINX_CLOUDFLARE_ACL", "true"),
            ("SSH_CLIENT", "203.0.113.9 51234 22"),
        ]);
        assert_eq!(
            s.cloudflare_acl.unwrap(),
            [
                "127.0.0.1".parse::<IpAddr>().unwrap(),
                "203.0.113.9".parse().unwrap()
            ]
        );
        let s = ok(&[
            NAME,
            ("NGINX_CLOUDFLARE_ACL", "true"),
            ("SSH_CLIENT", "garbage"),
        ]);
        assert_eq!(s.cloudflare_acl.unwrap().len(), 1);
        assert!(s.warnings[0].contains("SSH_CLIENT"));
    }

    #[test]
    fn every_bad_setting_is_reported_at_once_and_nothing_is_created() {
        let tmp = tempfile::tempdir().unwrap();
        let root = PikuRoot::new(tmp.path());
        let errors = NginxSettings::from_env(
            &app(),
            &root,
            &env(&[
                ("NGINX_SERVER_NAME", "good.example bad;name"),
                ("NGINX_HTTPS_ONLY", "maybe"),
                ("NGINX_STATIC_PATHS", "/a:../up,/b:ok"),
                ("NGINX_CACHE_PREFIXES", "/api"),
                ("NGINX_CACHE_TIME", "soon"),
                ("NGINX_HTTP_PORT", "0"),
            ]),
            true,
            None,
        )
        .unwrap_err();
        let settings: Vec<String> = errors
            .iter()
            .map(|e| e.to_string().split(':').next().unwrap().to_owned())
            .collect();
        assert_eq!(
            settings,
            [
                "NGINX_SERVER_NAME",
                "NGINX_STATIC_PATHS",
                "NGINX_CACHE_TIME",
                "NGINX_HTTP_PORT",
                "NGINX_HTTPS_ONLY"
            ],
            "{errors}"
        );
        assert!(!errors.to_string().contains('\n'));
        assert!(
            !root.cache_dir(&app()).exists(),
            "no cache dir for refused settings"
        );
        // Only bad names: still refused, not taken for "no nginx".
        assert!(parse(&[("NGINX_SERVER_NAME", "a;b")]).is_err());
    }

    #[test]
    fn listen_addresses_and_ports() {
        let s = ok(&[
            NAME,
            ("NGINX_IPV4_ADDRESS", "127.0.0.1"),
            ("NGINX_IPV6_ADDRESS", "::1"),
            ("NGINX_HTTP_PORT", "8080"),
            ("NGINX_HTTPS_PORT", "8443"),
        ]);
        assert_eq!(
            s.listen,
            Listen {
                ipv4: "127.0.0.1".into(),
                ipv6: Some("[::1]".into()),
                http_port: 8080,
                https_port: 8443
            }
        );
        assert_eq!(ok(&[NAME, ("DISABLE_IPV6", "true")]).listen.ipv6, None);
        assert_eq!(
            err(&[NAME, ("NGINX_IPV4_ADDRESS", "localhost")]),
            "NGINX_IPV4_ADDRESS: 'localhost' is not an IPv4 address"
        );
        assert!(err(&[NAME, ("NGINX_IPV6_ADDRESS", "[::1")]).starts_with("NGINX_IPV6_ADDRESS:"));
        assert_eq!(
            err(&[NAME, ("NGINX_HTTP_PORT", "0")]),
            "NGINX_HTTP_PORT: '0' is not a port (1-65535)"
        );
        assert!(err(&[NAME, ("NGINX_HTTPS_PORT", "70000")]).starts_with("NGINX_HTTPS_PORT:"));
        assert!(err(&[NAME, ("NGINX_HTTPS_PORT", "80")]).contains("also NGINX_HTTP_PORT"));
    }

    /// Issue 10 item 13: `NGINX_INCLUDE_FILE` committed as a symlink out of the checkout is
    /// refused, its target's content never pasted into the config.
    #[test]
    fn an_include_file_leading_outside_the_checkout_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let checkout = dir.path().join("src");
        std::fs::create_dir_all(&checkout).unwrap();
        let secret = dir.path().join("LIVE_ENV");
        std::fs::write(&secret, "SECRET=hunter2\n").unwrap();
        std::os::unix::fs::symlink(&secret, checkout.join("extra.conf")).unwrap();
        std::fs::write(checkout.join("ok.conf"), "gzip on;\n").unwrap();
        let env = EnvMap::from([("NGINX_INCLUDE_FILE".to_string(), "extra.conf".to_string())]);
        let err = read_include(&env, &checkout).unwrap_err().to_string();
        assert!(err.contains("leads outside the checkout"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        let env = EnvMap::from([("NGINX_INCLUDE_FILE".to_string(), "ok.conf".to_string())]);
        assert_eq!(
            read_include(&env, &checkout).unwrap().unwrap(),
            "gzip on;\n"
        );
    }
}
