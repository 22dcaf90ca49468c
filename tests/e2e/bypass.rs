//! Escapes from the bypass catalogue (`shared/reference/peers.md` §4) that the sandbox itself
//! might try: leaving its cgroup, making a namespace of its own, talking to the proxy
//! listener directly. Each must fail, and where the proxy sees it, be audited.

use std::fs;

use egressd_tests::{API, Scene, privileged};

#[test]
fn the_sandbox_cannot_move_itself_to_another_cgroup() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    // The cgroup2 mount as the sandbox sees it, then an attempt to join its root.
    let script = r#"
mnt=$(awk '$9 == "cgroup2" { print $5; exit }' /proc/self/mountinfo)
before=$(cat /proc/self/cgroup)
if echo $$ > "$mnt/cgroup.procs" 2>/dev/null; then echo moved; else echo refused; fi
after=$(cat /proc/self/cgroup)
[ "$before" = "$after" ] && echo same-cgroup
case "$after" in *egressd*) echo in-sandbox-cgroup;; esac
"#;
    let out = s.egressd().allow(API).sh(script).run();
    out.assert_success();
    assert!(out.stdout.contains("refused"), "\n{out}");
    assert!(out.stdout.contains("same-cgroup"), "\n{out}");
    assert!(out.stdout.contains("in-sandbox-cgroup"), "\n{out}");
}

#[test]
fn a_new_user_and_network_namespace_inside_the_sandbox_leads_nowhere() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    // With an unprivileged user namespace the sandbox can make a network namespace of its
    // own; the cgroup programs still apply there, and it has no route out anyway.
    let upstream = s.net.addr().to_string();
    let out = s
        .egressd()
        .allow(API)
        .sh(&format!(
            "unshare -Urn sh -c 'ip link set lo up 2>/dev/null; curl -sS --max-time 5 http://{upstream}/'; echo \" [exit $?]\""
        ))
        .run();
    out.assert_success();
    assert!(
        !out.stdout.contains("[exit 0]"),
        "the new namespace reached out\n{out}"
    );
    assert!(!out.stdout.contains("hello from"), "\n{out}");
    assert_eq!(s.api_http.connections(), 0, "\n{out}");
}

#[test]
fn connecting_to_the_proxy_listener_directly_is_refused_and_audited() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    // The proxy's listener is visible in the sandbox's own /proc/net/tcp (state 0A = LISTEN).
    let script = r#"
for local in $(awk 'NR > 1 && $4 == "0A" { print $2 }' /proc/net/tcp); do
  port=$((0x${local##*:}))
  curl -sS --max-time 5 -H 'Host: api.allowed.example' "http://127.0.0.1:$port/" && echo "reached $port"
done
echo done
"#;
    let out = s.egressd().allow(API).sh(script).run();
    out.assert_success();
    assert!(out.stdout.contains("done"), "\n{out}");
    assert!(
        !out.stdout.contains("reached"),
        "the proxy answered a direct connection\n{out}"
    );
    assert_eq!(s.api_http.connections(), 0, "\n{out}");
    assert!(
        out.audit().iter().any(|r| r["reason"]
            .as_str()
            .is_some_and(|why| why.contains("no original destination"))),
        "the direct connection should be audited as having no original destination\n{out}"
    );
}

#[test]
fn an_absolute_form_target_naming_another_host_is_refused() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    // Host says the allowed name, the request line names the forbidden one (domain fronting
    // in plain HTTP); and the reverse.
    let script = format!(
        "curl -sS --max-time 5 -o /dev/null -w '%{{http_code}}\\n' --resolve {API}:80:192.0.2.10 --request-target http://evil.example/ http://{API}/; \
         curl -sS --max-time 5 -o /dev/null -w '%{{http_code}}\\n' --resolve evil.example:80:192.0.2.10 -H 'Host: {API}' --request-target http://evil.example/ http://evil.example/"
    );
    let out = s.egressd().allow(API).sh(&script).run();
    out.assert_success();
    let codes: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(codes.len(), 2, "\n{out}");
    for code in codes {
        assert!(
            code == "403" || code == "400",
            "a mismatched request got {code}\n{out}"
        );
    }
    assert_eq!(s.evil_http.connections(), 0, "\n{out}");
    assert_eq!(s.api_http.connections(), 0, "\n{out}");
}

#[test]
fn numeric_ip_forms_are_not_names() {
    if !privileged() {
        return;
    }
    let s = Scene::new();
    // 192.0.2.10 written as a decimal, a hex and an octal number, and as IPv4-mapped IPv6.
    let mut script = String::new();
    for host in [
        "3221225994",
        "0xc000020a",
        "030000001012",
        "[::ffff:192.0.2.10]",
    ] {
        script.push_str(&format!(
            "curl -sS --max-time 5 -o /dev/null -w '{host} %{{http_code}}\\n' http://{host}/; "
        ));
    }
    let out = s.egressd().allow(API).sh(&script).run();
    for host in [
        "3221225994",
        "0xc000020a",
        "030000001012",
        "[::ffff:192.0.2.10]",
    ] {
        let line = out
            .stdout
            .lines()
            .find(|l| l.starts_with(host))
            .unwrap_or_else(|| panic!("no result for {host}\n{out}"));
        assert!(
            !line.ends_with(" 200"),
            "{host} reached something: {line}\n{out}"
        );
    }
    assert_eq!(
        s.api_http.connections() + s.evil_http.connections(),
        0,
        "\n{out}"
    );
}

/// Catalogue §10: the proxy is not a forward proxy. A `CONNECT` sent in plain HTTP to an
/// allowed host (a relayed tunnel to a denied one) is refused and audited; nothing reaches
/// either upstream.
#[test]
fn a_connect_request_to_an_allowed_host_does_not_open_a_tunnel() {
    if !privileged() {
        return;
    }
    let s = egressd_tests::Scene::new();
    let script = format!(
        "curl -sS --max-time 5 -o /dev/null -w '%{{http_code}}\\n' -p -x http://{API}:80 \
         --resolve {API}:80:192.0.2.10 https://evil.example/ ; echo \"exit $?\""
    );
    let out = s.egressd().allow(API).sh(&script).run();
    out.assert_success();
    assert!(!out.stdout.contains("exit 0"), "the tunnel opened\n{out}");
    assert_eq!(s.evil.connections(), 0, "\n{out}");
    assert_eq!(s.api_http.connections(), 0, "\n{out}");
    let records = out.audit();
    assert!(
        records
            .iter()
            .any(|r| r["decision"] == "deny" && r["method"] == "CONNECT"),
        "the refused CONNECT is audited\n{out}"
    );
}

/// Catalogue §14: a request smuggled behind an allowed one (CL.TE, and a second request in
/// the body) is either refused whole or decided on its own `Host`: the denied upstream never
/// sees a byte.
#[test]
fn smuggled_requests_do_not_reach_a_denied_host() {
    if !privileged() {
        return;
    }
    let s = egressd_tests::Scene::new();
    let smuggle = |first: &str| {
        format!(
            "bash -c \"exec 3<>/dev/tcp/192.0.2.10/80; printf '{first}GET / HTTP/1.1\\r\\nHost: evil.example\\r\\n\\r\\n' >&3; \
             timeout 5 cat <&3 | head -c 2000\"; echo; echo ---"
        )
    };
    let script = [
        // CL.TE: both headers; hyper refuses the ambiguity.
        smuggle(&format!(
            "POST / HTTP/1.1\\r\\nHost: {API}\\r\\nContent-Length: 5\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n0\\r\\n\\r\\n"
        )),
        // Two Content-Length values.
        smuggle(&format!(
            "POST / HTTP/1.1\\r\\nHost: {API}\\r\\nContent-Length: 0\\r\\nContent-Length: 44\\r\\n\\r\\n"
        )),
        // A plain pipeline: the second request is judged on its own Host.
        smuggle(&format!("GET / HTTP/1.1\\r\\nHost: {API}\\r\\n\\r\\n")),
    ]
    .join("\n");
    let out = s.egressd().allow(API).sh(&script).run();
    assert_eq!(s.evil_http.connections(), 0, "\n{out}");
    assert!(
        !out.stdout.contains("hello from evil.example"),
        "a smuggled request reached the denied host\n{out}"
    );
    // The pipelined second request is refused with egressd's 403.
    assert!(out.stdout.contains("403"), "\n{out}");
}

/// Catalogue §11: case and a trailing dot do not get a name past the blocklist.
#[test]
fn case_and_trailing_dots_do_not_evade_the_blocklist() {
    if !privileged() {
        return;
    }
    let s = egressd_tests::Scene::new();
    let blocked = format!("blocked.{API}");
    let mut script = String::new();
    for sni in [
        blocked.clone(),
        blocked.to_ascii_uppercase(),
        format!("{blocked}."),
        format!("{}.", blocked.to_ascii_uppercase()),
    ] {
        script.push_str(&format!(
            "echo | timeout 5 openssl s_client -connect 192.0.2.10:443 -servername '{sni}' 2>&1 \
             | grep -q 'BEGIN CERTIFICATE' && echo '{sni} handshake' || echo '{sni} refused'; "
        ));
    }
    let out = s.egressd().allow(API).block(&blocked).sh(&script).run();
    out.assert_success();
    assert_eq!(out.stdout.matches(" refused").count(), 4, "\n{out}");
    assert_eq!(s.api.connections(), 0, "\n{out}");
    let denials: Vec<_> = out
        .audit()
        .into_iter()
        .filter(|r| r["decision"] == "deny" && r["name"] == blocked.as_str())
        .collect();
    assert_eq!(
        denials.len(),
        4,
        "each is audited under the normalised name\n{out}"
    );
}

/// Unmounts a test's own mount when the test ends, however it ends.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Catalogue §9: the sandbox cannot reach egressd's kernel objects (pins on bpffs), the
/// host's root or egressd's own process. What is tested is what must stay unreachable, not
/// the mount point: where bpffs was never mounted, `/sys/fs/bpf` is an empty sysfs directory
/// anyone may list, and that is fine. So the test mounts a bpffs of its own, as egressd
/// mounts one (mode 0700), with a pin directory in it, and the sandbox must not list it;
/// nor may it list egressd's pins under whatever `/sys/fs/bpf` holds on this machine.
#[test]
fn the_sandbox_cannot_reach_bpffs_or_egressds_files() {
    if !privileged() {
        return;
    }
    let scratch = egressd_tests::Scratch::new();
    let mnt = scratch.path("bpf");
    fs::create_dir_all(&mnt).unwrap();
    // A bpffs mounted as egressd mounts it (mode 0700), holding a directory like the
    // daemon's pins; unmounted when the test ends.
    let mounted = std::process::Command::new("mount")
        .args(["-t", "bpf", "-o", "mode=0700", "bpf"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(mounted.success(), "mounting a bpffs for the test failed");
    let _unmount = Unmount(mnt.clone());
    fs::create_dir(mnt.join("egressd")).unwrap();
    let s = egressd_tests::Scene::new();
    let script = format!(
        "ls {mnt}/egressd >/dev/null 2>&1 && echo pins-readable || echo pins-denied; \
         for d in /sys/fs/bpf/egressd*; do [ -e \"$d\" ] && ls \"$d\" >/dev/null 2>&1 && echo \"bpffs-entry-readable $d\"; done; \
         ls /proc/1/root/ >/dev/null 2>&1 && echo init-root || echo no-init-root; \
         for p in $(ls /proc | grep -E '^[0-9]+$'); do tr '\\0' '\\n' < /proc/$p/cmdline 2>/dev/null | sed -n 2p; done | grep -c '^exec$' || true",
        mnt = mnt.display()
    );
    let out = s.egressd().allow(API).sh(&script).run();
    out.assert_success();
    assert!(out.stdout.contains("pins-denied"), "\n{out}");
    assert!(
        !out.stdout.contains("bpffs-entry-readable"),
        "an entry of the host's bpffs is readable\n{out}"
    );
    assert!(
        out.stdout.lines().last() == Some("0"),
        "the egressd that runs the sandbox is visible in it\n{out}"
    );
}
