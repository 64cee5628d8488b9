# shellcheck shell=bash
# The checks scripts/systemd-e2e runs against the test host (tests/systemd/host.sh), in order.
# Each check_<name> runs in a subshell with `set -euo pipefail`: any failing command fails it,
# and what it printed is shown. Checks build on the ones before (the install, the tour's apps);
# each says what it needs. Adding one: write check_<name> here and put <name> in CHECKS
# (scripts/systemd-e2e).

E2E=/mnt/piku-e2e                # the run's share, read-only in the container
WHEELS=/mnt/piku-e2e-wheels      # Python wheels for the Flask example (see check_wsgi_worker_cron)

# --- assertions -----------------------------------------------------------------------------

fail() { echo "FAIL: $*" >&2; return 1; }

# expect_in TEXT NEEDLE WHAT: TEXT contains NEEDLE (fixed string).
expect_in() {
    grep -qF -- "$2" <<<"$1" && return 0
    printf 'FAIL: %s lacks: %s\n--- it was:\n%s\n---\n' "$3" "$2" "$1" >&2
    return 1
}

# expect_not_in TEXT NEEDLE WHAT
expect_not_in() {
    grep -qF -- "$2" <<<"$1" || return 0
    printf 'FAIL: %s has: %s\n--- it was:\n%s\n---\n' "$3" "$2" "$1" >&2
    return 1
}

# eventually SECONDS WHAT CMD…: CMD succeeds within SECONDS (polled every 0.5 s).
eventually() {
    local secs=$1 what=$2
    shift 2
    for _ in $(seq $((secs * 2))); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    "$@" || true
    fail "$what (not within $secs s)"
}

# --- the apps -------------------------------------------------------------------------------

# `ssh piku@myserver CMD` as the client, output (stdout+stderr) on stdout.
piku_ssh() { host_client "ssh piku@myserver $1 2>&1"; }

# The running instances of KIND in `ps APP`: one "name pid port" line each.
running() {
    piku_ssh "ps $1" | awk -v kind="$2" '$1 ~ "^"kind"\\.[0-9]+$" && $2 == "running" {print $1, $3, $4}'
}

# running_count APP KIND N: exactly N running instances of KIND.
running_count() { [ "$(running "$1" "$2" | wc -l)" -eq "$3" ]; }

# no_process_of USER: nothing runs as USER in the container.
no_process_of() { ! host_root pgrep -u "$1" >/dev/null; }

# live_release APP VERSION: `releases APP` marks VERSION live.
live_release() { piku_ssh "releases $1" | grep -q "^\* $2 "; }

# journal_has TEXT JOURNALCTL-ARGS…: a journal line (message only) contains TEXT.
journal_has() {
    local text=$1
    shift
    # Not `grep -q`: it exits at the first match, journalctl then dies of SIGPIPE while it
    # still writes (an app's journal under load is long), and pipefail makes that a failure.
    host_journal -o cat "$@" | grep -F -- "$text" >/dev/null
}

# GET through the container's nginx by host name: body on stdout.
via_nginx() { host_http "http://$1${2:-/}"; }
via_nginx_tls() { host_http "https://$1${2:-/}" -k; }

# body_is URL-GETTER… -- EXPECTED: the body starts with EXPECTED.
body_starts() {
    local want=$1
    shift
    local got
    got=$("$@" 2>&1) || return 1
    [ "${got#"$want"}" != "$got" ]
}

# A git repo of examples/<example> in ~client/<dir>, committed on `main`.
client_repo() {
    local example=$1 dir=$2
    host_client "rm -rf ~/$dir && cp -r $E2E/examples/$example ~/$dir && cd ~/$dir && git init -q -b main && git add -A && git commit -qm 'first'"
}

# A line of the README as the client types it in ~/blog (its `# comment` included), with
# stderr joined to stdout.
as_typed() { host_client "cd ~/blog && { $1"$'\n'"} 2>&1"; }

# The lines of the README's fenced block that follows the line starting with $1.
readme_block() {
    awk -v start="$1" '
        index($0, start) == 1 {found = 1; next}
        found && /^```/ {if (inside) exit; inside = 1; next}
        inside {print}
    ' "$E2E_REPO/README.md"
}

# ==== checks ================================================================================

# The package, installed as an admin would, on a host with systemd, sshd and nginx (root,
# port 80, Debian's default site): user, PIKU_ROOT, services, nginx site.
check_install() {
    local out
    out=$(host_root bash -c "cd $E2E && apt install -y ./$(basename "$E2E_DEB") 2>&1")
    echo "$out" | tail -n 15
    expect_not_in "$out" "piku: nginx is not installed" "apt install"
    expect_not_in "$out" "piku: systemd is not running" "apt install"
    expect_not_in "$out" "cannot reach" "apt install"
    expect_in "$out" "piku: disabled nginx's default site" "apt install"
    local st
    st=$(host_root stat -c '%U %G %a' /home/piku)
    [ "$st" = "piku www-data 750" ] || fail "/home/piku is '$st', not 'piku www-data 750'"
    host_root test -d /home/piku/.piku/nginx || fail "no PIKU_ROOT"
    host_root systemctl is-active --quiet piku-supervisor.service || fail "piku-supervisor is not active"
    host_root systemctl is-active --quiet piku-nginx.path || fail "piku-nginx.path is not active"
    host_root systemctl is-enabled --quiet piku-supervisor.service || fail "piku-supervisor is not enabled"
    host_root test -L /etc/nginx/sites-enabled/piku.conf || fail "the nginx site is not enabled"
    host_root nginx -t
    host_root systemctl is-active --quiet nginx.service || fail "nginx is not running"
}

# The shape the nginx check must work in: the kernel's default privileged ports, nginx (root)
# on :80, and the piku user able to make the check's user + network namespace here, with
# `ip_nonlocal_bind` settable inside it (else the check falls back, see piku-nginx's check.rs).
check_piku_can_check_port_80() {
    [ "$(host_root cat /proc/sys/net/ipv4/ip_unprivileged_port_start)" = 1024 ] ||
        fail "ports below 1024 are not privileged in the container"
    host_root ss -ltnp | grep -q ':80 .*nginx' || fail "nginx does not listen on :80"
    local out
    out=$(host_root runuser -u piku -- unshare --user --map-root-user --net -- /bin/sh -c \
        'echo 1 >/proc/sys/net/ipv4/ip_nonlocal_bind && cat /proc/sys/net/ipv4/ip_nonlocal_bind && id -u' 2>&1)
    [ "$out" = $'1\n0' ] || fail "piku cannot make the check's namespace: $out"
    ! host_root runuser -u piku -- /usr/sbin/nginx -t -q 2>/dev/null ||
        fail "nginx -t as piku on root's config should fail (it cannot bind :80 or open root's logs)"
}

# A developer's account on the "machine" (the client), and the admin authorizing its key, as
# the README says. `myserver` and the apps' host names resolve to the container's loopback.
check_client_key() {
    host_root bash -c 'printf "127.0.0.1 myserver blog.example.com www.blog.example.com blog2.example.com\n127.0.1.1 piku-host\n" >>/etc/hosts'
    host_root useradd --create-home --shell /bin/bash client
    host_client "ssh-keygen -q -t ed25519 -N '' -f ~/.ssh/id_ed25519"
    # Lab shortcut: a person answers "yes" to the host key once; the test pre-accepts it.
    host_client "printf 'Host myserver\n  StrictHostKeyChecking accept-new\n' >~/.ssh/config"
    host_client "git config --global user.email dev@example.com && git config --global user.name Dev && git config --global init.defaultBranch main"
    host_root install -m 0644 /home/client/.ssh/id_ed25519.pub /tmp/your_key.pub
    local line
    line=$(readme_block "Then authorize your key" | grep 'setup:ssh')
    [ -n "$line" ] || fail "README has no setup:ssh line after 'Then authorize your key'"
    host_root bash -c "$line"
    local help
    help=$(piku_ssh help)
    expect_in "$help" "ps:scale" "ssh piku@myserver help"
}

# The README's 30-second tour, line by line, as the client, in a web app called blog.
check_tour() {
    client_repo web-python blog
    local lines
    lines=$(readme_block "## A 30-second tour" | grep -v '^#' | grep -v '^[[:space:]]*$')
    [ "$(wc -l <<<"$lines")" -ge 7 ] || fail "the tour block has too few commands: $lines"
    local line out port=
    # fd 3: the commands run inside read stdin (ssh does), which must not eat these lines.
    while IFS= read -r -u 3 line; do
        echo "\$ $line"
        case "$line" in
            *" logs "*) out=$(as_typed "timeout 5 $line" || true) ;;
            *) out=$(as_typed "$line") || { echo "$out"; fail "'$line' failed"; } ;;
        esac
        echo "$out" | tail -n 12
        case "$line" in
            "git remote add"*) ;;
            "git push"*)
                expect_in "$out" "-----> " "git push"
                port=$(sed -n "s/.*'blog' answers on http:\/\/127.0.0.1:\([0-9]*\)\/.*/\1/p" <<<"$out" | tail -n1)
                [ -n "$port" ] || fail "the push did not say where blog answers"
                eventually 30 "blog answers on :$port" body_starts "hello from blog" host_http "http://127.0.0.1:$port/"
                ;;
            *" ps blog"*) expect_in "$out" "web.1" "ps" && expect_in "$out" "running" "ps" ;;
            *" ps:scale blog web=3"*) eventually 60 "three web instances" running_count blog web 3 ;;
            *" config:set blog "*GREETING=*)
                eventually 60 "the new greeting" body_starts "hello world from blog" host_http "http://127.0.0.1:$port/"
                ;;
            *" logs blog"*) expect_in "$out" "web.1 | " "logs" ;;
            "git commit"*"git push piku main"*) expect_in "$out" "Release v2 of 'blog' is live" "the second push" ;;
            *" releases blog"*) expect_in "$out" "v1" "releases" && expect_in "$out" "* v2" "releases" ;;
            *" rollback blog"*)
                eventually 30 "v1 live again" live_release blog v1
                ;;
            *) fail "the tour has a line this check does not know: $line" ;;
        esac
    done 3<<<"$lines"
    eventually 60 "blog serves after the rollback" body_starts "hello" host_http "http://127.0.0.1:$port/"
}

# The README's "Behind nginx by host name" block: the same app by host name through the
# container's nginx (root, port 80) and over HTTPS with the self-signed certificate; the
# `# -----> ` lines it shows are what the commands printed.
check_nginx_by_name() {
    local block lines expected out all=
    block=$(readme_block "Behind nginx by host name")
    lines=$(grep -v '^#' <<<"$block" | grep -v '^[[:space:]]*$')
    expected=$(sed -n 's/^# //p' <<<"$block" | grep -- '----->')
    while IFS= read -r -u 3 line; do
        echo "\$ $line"
        out=$(as_typed "$line") || { echo "$out"; fail "'$line' failed"; }
        echo "$out" | tail -n 15
        all+=$out$'\n'
    done 3<<<"$lines"
    local want
    # Port numbers differ from run to run.
    all=$(sed 's/port [0-9][0-9]*/port N/g' <<<"$all")
    while IFS= read -r -u 3 want; do
        want=$(sed 's/port [0-9][0-9]*/port N/g' <<<"$want")
        grep -qF -- "$want" <<<"$all" || fail "the README shows '$want', the commands did not print it"
    done 3<<<"$expected"
    eventually 30 "blog.example.com through nginx on :80" body_starts "hello world from blog" via_nginx blog.example.com
    eventually 30 "blog.example.com over HTTPS" body_starts "hello world from blog" via_nginx_tls blog.example.com
    local cert
    cert=$(host_root bash -c 'openssl s_client -connect 127.0.0.1:443 -servername blog.example.com </dev/null 2>/dev/null | openssl x509 -noout -subject -issuer' 2>&1 || true)
    echo "$cert"
}

# A wsgi + worker + cron app (examples/python-wsgi: Flask under uWSGI, pip from the run's
# wheel directory in place of PyPI).
check_wsgi_worker_cron() {
    # Lab shortcut: no network in the container, so pip reads the wheels scripts/systemd-e2e
    # downloaded from PyPI on this machine (bound at $WHEELS) instead of asking PyPI.
    host_root bash -c "printf '[global]\nno-index = true\nfind-links = $WHEELS\n' >/etc/pip.conf"
    client_repo python-wsgi flask
    host_client "cd ~/flask && git remote add piku piku@myserver:flask"
    local out
    out=$(host_client "cd ~/flask && git push piku main 2>&1") || { echo "$out"; fail "push of flask failed"; }
    echo "$out" | tail -n 20
    local port
    port=$(sed -n "s/.*'flask' answers on http:\/\/127.0.0.1:\([0-9]*\)\/.*/\1/p" <<<"$out" | tail -n1)
    [ -n "$port" ] || fail "the push did not say where flask answers"
    eventually 60 "flask answers" body_starts "hello from flask" host_http "http://127.0.0.1:$port/"
    eventually 30 "one wsgi instance" running_count flask wsgi 1
    eventually 30 "one worker" running_count flask worker 1
    piku_ssh "ps flask" | tee /dev/stderr | grep -q '^cron1\.1' || fail "no cron1 entry"
}

# `systemctl status piku-supervisor` is active (running) and every app process is in its
# cgroup tree (the supervisor started them; nothing escaped to a session).
check_systemctl_status() {
    local out
    out=$(host_root systemctl status piku-supervisor.service --no-pager -l -n 0 || true)
    echo "$out"
    expect_in "$out" "Active: active (running)" "systemctl status"
    expect_in "$out" "app.py" "the status's cgroup tree"
    expect_in "$out" "bin/uwsgi " "the status's cgroup tree"
    local pid cg n=0
    for pid in $(running blog web | awk '{print $2}') $(running flask wsgi | awk '{print $2}') $(running flask worker | awk '{print $2}'); do
        cg=$(host_root cat "/proc/$pid/cgroup" | sed -n 's/^0:://p')
        case "$cg" in
            /system.slice/piku-supervisor.service/*) n=$((n + 1)) ;;
            *) fail "process $pid is in $cg, outside piku-supervisor.service" ;;
        esac
    done
    [ "$n" -eq 5 ] || fail "expected 5 app processes (web x3, wsgi, worker), found $n"
}

# The daemon's own log in the journal.
check_journal_unit() {
    local out
    out=$(host_journal -u piku-supervisor.service -o cat)
    echo "$out" | tail -n 10
    expect_in "$out" "piku-supervisor ready socket=/home/piku/.piku/supervisor.sock" "journalctl -u piku-supervisor"
    out=$(host_journal -u piku-supervisor.service -o cat -t systemd)
    expect_in "$out" "Started piku-supervisor.service" "journalctl -u piku-supervisor -t systemd"
}

# An app's lines in the journal, under its name, with the process field.
check_journal_app() {
    host_http "http://blog.example.com/journal-probe" >/dev/null
    local out
    eventually 10 "the request in blog's journal" journal_has "request /journal-probe" -t blog
    out=$(host_journal -t blog -o verbose -n 200)
    expect_in "$out" "PIKU_PROCESS=web." "journalctl -t blog -o verbose"
    expect_in "$out" "SYSLOG_IDENTIFIER=blog" "journalctl -t blog -o verbose"
    out=$(host_journal -t blog PIKU_PROCESS=web.1 -o cat)
    [ -n "$out" ] || fail "journalctl -t blog PIKU_PROCESS=web.1 is empty"
    echo "$out" | tail -n 5
}

# The formation every restart and reboot must bring back: blog web=3 (behind nginx), flask
# wsgi=1 worker=1.
apps_back() {
    eventually 60 "blog web=3 running" running_count blog web 3
    eventually 60 "flask wsgi=1 running" running_count flask wsgi 1
    eventually 60 "flask worker=1 running" running_count flask worker 1
    eventually 60 "blog through nginx" body_starts "hello world from blog" via_nginx blog.example.com
}

check_supervisor_restart() {
    local before after apps_before
    before=$(host_root systemctl show -P MainPID piku-supervisor.service)
    apps_before=$( (running blog web; running flask wsgi; running flask worker) | sort)
    host_root systemctl restart piku-supervisor.service
    after=$(host_root systemctl show -P MainPID piku-supervisor.service)
    [ "$before" != "$after" ] || fail "MainPID did not change ($before)"
    apps_back
    # A clean restart stops the apps (KillMode=process keeps them only after a crash).
    [ "$( (running blog web; running flask wsgi; running flask worker) | sort)" != "$apps_before" ] ||
        fail "the apps kept their processes across a clean restart"
}

# new_main_pid OLD: piku-supervisor runs with another MainPID than OLD.
new_main_pid() {
    local now
    now=$(host_root systemctl show -P MainPID piku-supervisor.service)
    [ "$now" != "$1" ] && [ "$now" != 0 ]
}

# Issue 15: a crash of the daemon (kill -9 under load through nginx) → systemd starts it again
# with the descriptors it kept (FDSTORE): the new daemon adopts every app process (same pids),
# nginx's requests wait in the front sockets' backlog meanwhile.
check_supervisor_crash() {
    local before apps_before load codes failed slowest
    before=$(host_root systemctl show -P MainPID piku-supervisor.service)
    apps_before=$( (running blog web; running flask wsgi; running flask worker) | sort)
    load=$(mktemp)
    # 4 clients for 6 s, one request after another: "<status> <seconds>" each.
    host_client 'for w in 1 2 3 4; do (end=$(($(date +%s) + 6)); while [ "$(date +%s)" -lt $end ]; do
            curl -s -o /dev/null --max-time 20 -w "%{http_code} %{time_total}\n" http://blog.example.com/
        done) & done; wait' >"$load" &
    sleep 2
    host_root kill -9 "$before"
    wait
    eventually 30 "a new MainPID" new_main_pid "$before"
    eventually 30 "the journal's adoption line" journal_has "recovered after a crash: adopted" -u piku-supervisor.service
    eventually 10 "blog's journal to say its processes were kept" \
        journal_has "kept running across the supervisor's crash" -t blog
    host_journal -u piku-supervisor.service -o short-precise |
        grep -E "recovered after a crash|Main process exited|Started piku" | tail -n 3
    apps_back
    [ "$( (running blog web; running flask wsgi; running flask worker) | sort)" = "$apps_before" ] ||
        fail "app processes were restarted after the crash"
    # The worker's numbered lines (one every 3 s): none lost across the crash.
    local worker ticks gaps
    worker=$(running flask worker | awk '{print $2}')
    ticks=$(host_journal -t flask -o cat | awk -v pid="pid=$worker" '$1 == "worker" && $2 == "tick" && $4 == pid {print $3}')
    gaps=$(echo "$ticks" | awk 'NR > 1 && $1 != prev + 1 {g++} {prev = $1} END {print g + 0}')
    echo "worker $worker: $(echo "$ticks" | wc -l) ticks in the journal, $gaps gaps"
    [ "$gaps" -eq 0 ] || fail "worker lines lost: $(echo $ticks)"
    codes=$(awk '{print $1}' "$load" | sort | uniq -c | tr '\n' ' ')
    failed=$(awk '$1 != 200' "$load" | wc -l)
    slowest=$(awk '$2 > m {m = $2} END {print m}' "$load")
    rm -f "$load"
    echo "after kill -9: $(echo "$codes") (status counts); slowest request ${slowest} s"
    # One request in flight per client may be cut by the kill; none is refused.
    [ "$failed" -le 4 ] || fail "$failed requests failed during the crash: $codes"
}

check_cron_ran() {
    eventually 75 "a cron1.1 line in flask's journal" journal_has "" -t flask PIKU_PROCESS=cron1.1
    host_journal -t flask PIKU_PROCESS=cron1.1 -o cat | tail -n 3
}

# Done by scripts/systemd-e2e between checks: power off, boot the same tree. This checks
# what came back.
check_after_reboot() {
    host_root systemctl is-active --quiet piku-supervisor.service || fail "piku-supervisor did not start at boot"
    host_root systemctl is-active --quiet piku-nginx.path || fail "piku-nginx.path did not start at boot"
    apps_back
}

# --- nginx: what root's nginx refuses is refused, what it accepts is accepted ---------------

# Commits TEXT as ~/blog/nginx.inc and pushes; prints the push's output, fails with it.
push_include() {
    host_client "cd ~/blog && printf '%s\n' $(printf '%q' "$1") >nginx.inc && git add nginx.inc && git commit -qm 'nginx.inc: $2' && git push piku main 2>&1"
}

# The value of response header NAME for a GET of URL (curl args after it).
header_of() {
    local name=$1
    shift
    host_http "$@" -o /dev/null -D - | tr -d '\r' | sed -n "s/^$name: //Ip" | head -n1
}

# refused_push TEXT WHAT EXPECTED…: pushing nginx.inc=TEXT fails, the output has each
# EXPECTED (nginx's own words), and the old config keeps serving.
refused_push() {
    local text=$1 what=$2 out
    shift 2
    if out=$(push_include "$text" "$what"); then
        echo "$out"
        fail "a push with $what was accepted"
    fi
    echo "$out" | grep -E 'nginx|Error' || true
    local want
    for want in "$@"; do expect_in "$out" "$want" "the refused push ($what)"; done
    expect_in "$out" "the nginx config was not changed" "the refused push ($what)"
}

check_nginx_refusals() {
    local out
    push_include "add_header X-Piku-E2E one;" "a header" >/dev/null
    out=$(piku_ssh "config:set blog NGINX_INCLUDE_FILE=nginx.inc")
    echo "$out" | tail -n 3
    eventually 30 "the include's header through nginx" test "$(header_of X-Piku-E2E http://blog.example.com/)" = one

    refused_push "bogus_directive on;" "an unknown directive" \
        '[emerg] unknown directive "bogus_directive"' "/home/piku/.piku/nginx/blog.conf.new:"
    refused_push "client_max_body_size lots;" "a bad value" \
        '[emerg] "client_max_body_size" directive invalid value'
    refused_push "client_max_body_size 1m" "a missing semicolon" \
        '[emerg] directive "client_max_body_size" is not terminated by ";"'
    [ "$(header_of X-Piku-E2E http://blog.example.com/)" = one ] || fail "the old config is not serving"
    body_starts "hello world from blog" via_nginx blog.example.com || fail "blog is not served through nginx"
}

# A file only root may read: the check as piku cannot open it, root's nginx can, so the
# deploy must go through (root's full test decides).
check_nginx_root_only_file() {
    host_root bash -c 'echo "add_header X-Piku-Secret yes;" >/etc/nginx/piku-e2e-secret.conf && chmod 0600 /etc/nginx/piku-e2e-secret.conf'
    local out
    out=$(push_include "add_header X-Piku-E2E two; include /etc/nginx/piku-e2e-secret.conf;" "a root-only include") ||
        { echo "$out"; fail "a config root's nginx accepts was refused"; }
    echo "$out" | grep -E 'nginx|Warning' || true
    expect_not_in "$out" "nginx was not reloaded" "the push"
    eventually 30 "the root-only include's header" test "$(header_of X-Piku-Secret http://blog.example.com/)" = yes
}

# A clash the app's config alone does not show (a second `default_server` for :80 beside the
# site's): root's full test refuses it at the app's file, the deploy fails with that line
# and the previous config is put back.
check_nginx_clash_only_root_sees() {
    piku_ssh "config:set blog NGINX_HTTPS_ONLY=true" | tail -n 2
    eventually 30 "plain HTTP redirects" test "$(header_of Location http://blog.example.com/x)" = "https://blog.example.com/x"
    refused_push "add_header X-Piku-E2E three; listen 80 default_server;" "a second default server" \
        "[emerg] a duplicate default server for 0.0.0.0:80 in /home/piku/.piku/nginx/blog.conf:" \
        "nginx rejected /home/piku/.piku/nginx/blog.conf"
    [ "$(header_of X-Piku-Secret https://blog.example.com/ -k)" = yes ] || fail "the previous config is not serving"
    [ "$(header_of X-Piku-E2E https://blog.example.com/ -k)" = two ] || fail "the previous config is not serving"
    host_root grep -q "X-Piku-E2E two" /home/piku/.piku/nginx/blog.conf || fail "blog.conf was not put back"
    push_include "add_header X-Piku-E2E one;" "back to one" >/dev/null
    piku_ssh "config:set blog NGINX_HTTPS_ONLY=false" | tail -n 2
    eventually 30 "plain HTTP serves again" body_starts "hello world from blog" via_nginx blog.example.com
}

# nginx not running: the deploy's config goes in, and the push says nginx was not reloaded.
check_reload_failure_shows() {
    host_root systemctl stop nginx.service
    local out
    out=$(piku_ssh "config:set blog 'NGINX_SERVER_NAME=\"blog.example.com www.blog.example.com\"'")
    echo "$out" | grep -E 'nginx|Warning' || true
    expect_in "$out" "Warning: the nginx config is in place but nginx was not reloaded: nginx is not running" "config:set"
    host_root systemctl start nginx.service
    eventually 30 "the new name once nginx runs" body_starts "hello world from blog" via_nginx www.blog.example.com
}

# The reload without the watcher, as on a host without systemd: the sudoers line shipped in
# the package and PIKU_NGINX_RELOAD=sudo for piku's sessions (sshd's SetEnv).
check_reload_by_sudo() {
    host_root systemctl stop piku-nginx.path
    host_root install -m 0440 /usr/share/doc/piku/examples/sudoers /etc/sudoers.d/piku-nginx
    host_root bash -c 'printf "Match User piku\n    SetEnv PIKU_NGINX_RELOAD=sudo\n" >>/etc/ssh/sshd_config && systemctl reload ssh'
    local seq out
    seq=$(host_root cat /run/piku-nginx/status.json | sed 's/.*"seq":\([0-9]*\).*/\1/')
    out=$(piku_ssh "config:set blog 'NGINX_SERVER_NAME=\"blog.example.com blog2.example.com\"'")
    echo "$out" | grep -E 'nginx|Warning' || true
    expect_not_in "$out" "nginx was not reloaded" "config:set through sudo"
    eventually 30 "blog2.example.com through nginx" body_starts "hello world from blog" via_nginx blog2.example.com
    [ "$(host_root cat /run/piku-nginx/status.json | sed 's/.*"seq":\([0-9]*\).*/\1/')" = "$seq" ] ||
        fail "the watcher reloaded, not sudo"
    # Without the sudoers line the push says what to do.
    host_root rm /etc/sudoers.d/piku-nginx
    out=$(piku_ssh "config:set blog 'NGINX_SERVER_NAME=\"blog.example.com\"'")
    expect_in "$out" "Warning: the nginx config is in place but nginx was not reloaded: sudo -n /usr/lib/piku/piku-nginx-reload: sudo: a password is required (the sudoers line in piku's README allows it)" "config:set without the sudoers line"
    host_root bash -c 'sed -i "/^Match User piku$/,\$d" /etc/ssh/sshd_config && systemctl reload ssh'
    host_root systemctl start piku-nginx.path
    out=$(piku_ssh "config:set blog 'NGINX_SERVER_NAME=\"blog.example.com www.blog.example.com\"'")
    expect_not_in "$out" "nginx was not reloaded" "config:set back on the watcher"
}

# --- the package's life -----------------------------------------------------------------------

# Issue 15: the package's upgrade reloads the supervisor, which re-executes itself on the new
# binary (same MainPID) and keeps every app process (same pids).
check_upgrade() {
    local before out apps_before
    before=$(host_root systemctl show -P MainPID piku-supervisor.service)
    apps_before=$( (running blog web; running flask wsgi; running flask worker) | sort)
    out=$(host_root bash -c "cd $E2E && apt install -y ./$(basename "$E2E_DEB_NEXT") 2>&1")
    echo "$out" | tail -n 5
    expect_in "$(host_root dpkg-query -W -f '${Version}' piku)" "$E2E_VERSION_NEXT" "the installed version"
    eventually 30 "the supervisor upgraded in place" journal_has "upgraded in place" -u piku-supervisor.service
    [ "$(host_root systemctl show -P MainPID piku-supervisor.service)" = "$before" ] ||
        fail "the supervisor was restarted instead of upgraded in place"
    apps_back
    [ "$( (running blog web; running flask wsgi; running flask worker) | sort)" = "$apps_before" ] ||
        fail "app processes were restarted by the upgrade"
}

check_remove() {
    local out
    out=$(host_root apt-get remove -y piku 2>&1)
    echo "$out" | tail -n 5
    eventually 30 "no process of user piku" no_process_of piku
    host_root ps -u piku -o pid=,args= || true
    host_root test -d /home/piku/.piku/releases/blog || fail "blog's releases are gone"
    host_root test -d /home/piku/.piku/repos/flask || fail "flask's repo is gone"
    host_root test ! -e /etc/nginx/sites-enabled/piku.conf || fail "the nginx site is still enabled"
    host_root test -L /etc/nginx/sites-enabled/default || fail "Debian's default site is not back"
    host_root nginx -t
    host_root systemctl is-active --quiet nginx.service || fail "nginx stopped"
    ! host_root systemctl is-active --quiet piku-supervisor.service || fail "piku-supervisor still active"
}

check_purge() {
    local out
    out=$(host_root apt-get purge -y piku 2>&1)
    echo "$out" | tail -n 3
    expect_in "$out" "piku: removed /home/piku/.piku" "apt-get purge"
    host_root test ! -e /home/piku/.piku || fail "/home/piku/.piku is still there"
    host_root getent passwd piku >/dev/null || fail "the piku user went too"
}

# --- installs on other hosts -------------------------------------------------------------------

# The package on a host that lacks what it wants: no systemd running (the tree run without
# booting it), no nginx, and a `piku` user made beforehand whose home nginx cannot traverse.
# Each is one `piku:` line with the fix, and the install itself succeeds.
check_install_on_a_bare_host() {
    host_new bare
    trap 'host_destroy' EXIT
    cp "$E2E_DEB" "$HOST_RUN/share/"
    local out
    out=$(host_run_unbooted /bin/sh -c "
        dpkg --purge nginx nginx-common >/dev/null 2>&1
        useradd --system --home-dir /srv/piku --create-home --shell /bin/sh --gid www-data piku
        chmod 0700 /srv/piku
        cd $E2E && apt-get install -y --no-install-recommends ./$(basename "$E2E_DEB") 2>&1
        echo \"status \$?\"")
    host_destroy
    echo "$out" | grep -E '^piku:|^status' || true
    expect_in "$out" "status 0" "the install"
    expect_in "$out" "piku: systemd is not running, so nothing was started: run 'PIKU_ROOT=/srv/piku/.piku /usr/bin/piku-supervisor' as piku" "the install without systemd"
    expect_in "$out" "piku: nginx is not installed, so apps with NGINX_SERVER_NAME have no front: apt install nginx && dpkg-reconfigure piku" "the install without nginx"
    expect_in "$out" "piku: nginx (www-data) cannot reach /srv/piku/.piku/nginx: chgrp www-data /srv/piku && chmod 0750 /srv/piku" "the install with a closed home"
    expect_in "$out" "piku: user piku's home is /srv/piku, but" "the install with another home"
}

# README's "Without the package" steps, as root on a fresh host, from the repository's files
# and the release binaries ("or copy the three binaries over"), then a push of an app by host
# name through nginx on :80.
check_manual_install() {
    host_new manual
    mkdir -p "$HOST_RUN/share/repo/target/release" "$HOST_RUN/share/examples"
    cp -r "$E2E_REPO/systemd" "$E2E_REPO/nginx" "$HOST_RUN/share/repo/"
    cp "$E2E_REPO"/target/release/{piku,piku-supervisor,piku-nginx-reload} "$HOST_RUN/share/repo/target/release/"
    cp -r "$E2E_REPO/examples/web-python" "$HOST_RUN/share/examples/"
    trap 'host_destroy' EXIT
    host_up
    host_root bash -c 'echo "127.0.0.1 myserver manual.example.com" >>/etc/hosts'
    host_root useradd --create-home --shell /bin/bash client
    host_client "ssh-keygen -q -t ed25519 -N '' -f ~/.ssh/id_ed25519 && printf 'Host myserver\n  StrictHostKeyChecking accept-new\n' >~/.ssh/config"
    host_client "git config --global user.email dev@example.com && git config --global user.name Dev"
    host_root install -m 0644 /home/client/.ssh/id_ed25519.pub /tmp/your_key.pub
    host_root cp -r "$E2E/repo" /root/piku
    local line out
    while IFS= read -r -u 3 line; do
        case "$line" in
            "" | "#"*) continue ;;
            "cargo build"*) continue ;;    # the binaries are in target/release already
        esac
        echo "# $line"
        out=$(host_root bash -c "cd /root/piku && { $line"$'\n'"} 2>&1") || { echo "$out"; fail "'$line' failed"; }
        echo "$out" | tail -n 3
    done 3< <(readme_block "The same install by hand")
    client_repo web-python manual
    host_client "cd ~/manual && echo NGINX_SERVER_NAME=manual.example.com >>ENV && git commit -qam 'by name' && git remote add piku piku@myserver:manual"
    out=$(host_client "cd ~/manual && git push piku main 2>&1") || { echo "$out"; fail "the push failed"; }
    echo "$out" | grep -E 'nginx|Warning' || true
    expect_not_in "$out" "nginx was not reloaded" "the push"
    eventually 30 "manual.example.com through nginx on :80" body_starts "hello from manual" via_nginx manual.example.com
    host_root systemctl is-active --quiet piku-supervisor.service || fail "piku-supervisor is not active"
}
