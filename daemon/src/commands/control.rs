//! `egressd attach`, `detach`, `status` and `reload`: clients of a running daemon's control
//! socket (the protocol is `crate::control`).

use std::{
    fmt::Write as _,
    time::{Duration, Instant},
};

use anyhow::anyhow;

use crate::{
    Failure,
    cli::{AttachArgs, ControlArgs, DetachArgs, StatusArgs},
    control::{self, Request, Response, Status, Target},
};

/// `egressd attach`.
pub fn attach(args: AttachArgs) -> Result<u8, Failure> {
    let target = match (args.cgroup, args.pid, args.job) {
        (Some(path), _, _) => {
            let path = std::path::absolute(&path).unwrap_or(path);
            Target::Cgroup {
                path,
                netns: args.netns,
            }
        }
        (None, Some(pid), _) => Target::Pid { pid },
        _ => {
            warn_job_doors();
            Target::Job {
                user: crate::env::sudo_user()
                    .map(|(uid, _)| uid)
                    .or_else(|| Some(nix::unistd::getuid().as_raw())),
                allow_docker: args.allow_docker,
            }
        }
    };
    exchange(
        &args.control,
        &Request::Attach {
            target,
            name: args.name,
        },
    )
}

/// `attach --job`: names on stderr the doors the job keeps (`job_doors`), read from the
/// process that asked (this one's parent: `sudo`, or the step's shell).
fn warn_job_doors() {
    let (uid, gid) = crate::env::sudo_user().unwrap_or_else(|| {
        (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        )
    });
    let job = super::job_doors::Job::of(std::os::unix::process::parent_id(), uid, gid);
    eprint!(
        "{}",
        super::job_doors::render(&super::job_doors::doors(&job))
    );
}

/// `egressd detach`.
pub fn detach(args: DetachArgs) -> Result<u8, Failure> {
    exchange(
        &args.control,
        &Request::Detach {
            name: args.name,
            all: args.all,
        },
    )
}

/// `egressd reload`.
pub fn reload(args: &ControlArgs) -> Result<u8, Failure> {
    exchange(args, &Request::Reload)
}

/// `egressd status`, optionally waiting for a daemon that is starting.
pub fn status(args: &StatusArgs) -> Result<u8, Failure> {
    let deadline = args.wait.map(|s| Instant::now() + Duration::from_secs(s));
    loop {
        match control::send(&args.control.control_socket, &Request::Status) {
            Ok(response) => return print(&args.control, &response),
            Err(e) => match deadline {
                Some(d) if Instant::now() < d => std::thread::sleep(Duration::from_millis(100)),
                _ => return Err(Failure::runtime(e)),
            },
        }
    }
}

fn exchange(args: &ControlArgs, request: &Request) -> Result<u8, Failure> {
    let response = control::send(&args.control_socket, request).map_err(Failure::runtime)?;
    print(args, &response)
}

/// Prints the answer (JSON with `--json`); a refusal is an error (exit 1).
fn print(args: &ControlArgs, response: &Response) -> Result<u8, Failure> {
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(response).unwrap_or_default()
        );
    } else {
        if let Some(message) = &response.message {
            println!("{message}");
        }
        if let Some(status) = &response.status {
            print!("{}", render(status));
        }
    }
    if response.ok {
        Ok(0)
    } else {
        Err(Failure::runtime(anyhow!(
            "{}",
            response
                .error
                .clone()
                .unwrap_or_else(|| "the daemon refused".to_owned())
        )))
    }
}

/// The status as text.
fn render(status: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "daemon: pid {}, since {}", status.pid, status.started);
    let _ = writeln!(
        out,
        "policy: {} entries, {} (reloaded {} time{})",
        status.policy_entries,
        status.policy_hash,
        status.reloads,
        if status.reloads == 1 { "" } else { "s" }
    );
    if let Some(error) = &status.last_reload_error {
        let _ = writeln!(out, "last reload FAILED (running policy kept): {error}");
    }
    if let Some(bundle) = &status.ca_bundle {
        let _ = writeln!(out, "trust bundle: {bundle}");
    }
    if let Some(log) = &status.audit_log {
        let _ = writeln!(out, "audit log: {log}");
    }
    let _ = writeln!(
        out,
        "connections: {} allowed, {} denied",
        status.allowed, status.denied
    );
    if status.audit_unwritten > 0 {
        let _ = writeln!(
            out,
            "audit log: {} lines could NOT be written (lost)",
            status.audit_unwritten
        );
    }
    if let Some(o) = &status.otlp {
        let lost = o.dropped + o.refused + o.rejected;
        let _ = writeln!(
            out,
            "otlp: {} lines sent to {}{}",
            o.exported,
            o.endpoint,
            if lost > 0 {
                format!(
                    "; {lost} did NOT reach it ({} dropped, queue full; {} refused; {} rejected; \
                     last error: {})",
                    o.dropped,
                    o.refused,
                    o.rejected,
                    o.last_error.as_deref().unwrap_or("none")
                )
            } else {
                String::new()
            }
        );
    }
    for name in &status.orphans {
        let _ = writeln!(
            out,
            "orphaned: {name} (left by a daemon that died; closed until `egressd detach {name}`)"
        );
    }
    if status.attachments.is_empty() {
        let _ = writeln!(out, "attachments: none");
        return out;
    }
    let _ = writeln!(out, "attachments:");
    for a in &status.attachments {
        let _ = writeln!(
            out,
            "  {}  cgroup {}  netns {}  proxy :{}  dns :{}  since {}",
            a.name,
            a.cgroup,
            a.netns.as_deref().unwrap_or("(the daemon's)"),
            a.proxy_port,
            a.dns_port,
            a.since
        );
    }
    out
}
