//! Secrets on disk: the credential files egressd reads must be out of the sandbox user's
//! reach, and credentials the sandbox user could read elsewhere are named before it starts.
//!
//! A `file` or `per-actor` credential the sandbox user can read is no secret at all: the
//! agent just `cat`s it, so egressd refuses to start. Credentials that other tools left
//! behind (the token `actions/checkout` persists in `.git/config`, a Docker login, `gh`'s
//! hosts file, package-registry tokens, cloud CLI credentials, a self-hosted runner's own
//! `.credentials`) are reported with the file's name; `--hide PATH` masks one, and
//! `secrets = "refuse"` makes any finding fatal.

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// Whether user `uid` (group `gid`) can read `path`: every directory on the way searchable
/// and the file readable, by the owner, group or other bits that apply to it.
pub fn readable_by(path: &Path, uid: u32, gid: u32) -> bool {
    let allows = |meta: &fs::Metadata, owner_bit: u32| {
        let mode = meta.mode();
        if meta.uid() == uid {
            mode & owner_bit != 0
        } else if meta.gid() == gid {
            mode & (owner_bit >> 3) != 0
        } else {
            mode & (owner_bit >> 6) != 0
        }
    };
    for dir in path.ancestors().skip(1) {
        if dir.as_os_str().is_empty() {
            continue;
        }
        match fs::metadata(dir) {
            Ok(meta) if allows(&meta, 0o100) => {}
            _ => return false,
        }
    }
    fs::metadata(path).is_ok_and(|meta| allows(&meta, 0o400))
}

/// Checks that each credential file egressd reads is owned by root (or by egressd's own
/// user) and unreadable by the sandbox user; the error names the file and the fix.
pub fn check_credential_files(
    config: &egressd_config::Config,
    uid: u32,
    gid: u32,
) -> Result<(), String> {
    let own = nix::unistd::geteuid().as_raw();
    for credential in &config.credentials {
        let path = match &credential.source {
            egressd_config::CredentialSource::File { path } => path,
            egressd_config::CredentialSource::PerActor { table } => table,
            _ => continue,
        };
        let Ok(meta) = fs::metadata(path) else {
            // The broker reports a missing file when it first needs it.
            continue;
        };
        let name = &credential.name;
        if meta.uid() != 0 && meta.uid() != own {
            return Err(format!(
                "credential {name:?}: {} is owned by uid {}, not by root: the sandbox's user \
                 could change or read it; `chown root: {0}` and `chmod 600 {0}`",
                path.display(),
                meta.uid()
            ));
        }
        if readable_by(path, uid, gid) {
            return Err(format!(
                "credential {name:?}: {} is readable by the sandbox's user (uid {uid}), who \
                 could simply read the secret; `chmod 600 {0}` (owned by root)",
                path.display()
            ));
        }
    }
    Ok(())
}

/// One credential the sandbox user could read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The file.
    pub path: PathBuf,
    /// What it holds.
    pub what: &'static str,
}

/// Where credentials are commonly left, relative to the user's home, what each holds, and
/// a marker its text must contain to count (`None`: the file itself is the credential).
const HOME_FILES: &[(&str, &str, Option<&[&str]>)] = &[
    (".git-credentials", "git credentials", None),
    (".config/git/credentials", "git credentials", None),
    (
        ".docker/config.json",
        "a Docker registry login",
        Some(&["\"auth\""]),
    ),
    (
        ".config/gh/hosts.yml",
        "a gh CLI token",
        Some(&["oauth_token"]),
    ),
    (
        ".npmrc",
        "an npm registry token",
        Some(&["_authToken", "_auth", "_password"]),
    ),
    (".pypirc", "a PyPI password", Some(&["password"])),
    (".netrc", "netrc passwords", Some(&["password"])),
    (".cargo/credentials.toml", "a crates.io token", None),
    (".cargo/credentials", "a crates.io token", None),
    (".aws/credentials", "AWS credentials", None),
    (
        ".config/gcloud/application_default_credentials.json",
        "Google Cloud credentials",
        None,
    ),
    (
        ".config/gcloud/credentials.db",
        "Google Cloud credentials",
        None,
    ),
    (".azure/msal_token_cache.json", "Azure CLI tokens", None),
    (".azure/accessTokens.json", "Azure CLI tokens", None),
    (
        ".kube/config",
        "Kubernetes credentials",
        Some(&["token", "client-key-data", "password"]),
    ),
    (".ssh/id_rsa", "an SSH private key", None),
    (".ssh/id_ed25519", "an SSH private key", None),
    (".ssh/id_ecdsa", "an SSH private key", None),
];

/// The credentials user `uid`/`gid` can read (in its passwd home and the places
/// [`find_readable`] looks), as one line naming each file and what it holds; `None` when
/// there are none.
pub fn readable_credentials(uid: u32, gid: u32, hidden: &[PathBuf]) -> Option<String> {
    let home = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.dir);
    let found = find_readable(uid, gid, home.as_deref(), hidden);
    (!found.is_empty()).then(|| {
        found
            .iter()
            .map(|f| format!("{} ({})", f.path.display(), f.what))
            .collect::<Vec<_>>()
            .join(", ")
    })
}

/// Looks for credentials user `uid`/`gid` (home `home`) can read: the files above, the
/// `.git/config` of the working directory and of `GITHUB_WORKSPACE` when it holds a token
/// (`actions/checkout` persists one as an `extraheader`), a self-hosted runner's
/// `.credentials`, and the file `GOOGLE_APPLICATION_CREDENTIALS` names. Paths under a
/// `hidden` one are left out.
pub fn find_readable(uid: u32, gid: u32, home: Option<&Path>, hidden: &[PathBuf]) -> Vec<Finding> {
    let mut candidates: Vec<(PathBuf, &'static str, Option<&[&str]>)> = Vec::new();
    if let Some(home) = home {
        for (rel, what, marker) in HOME_FILES {
            candidates.push((home.join(rel), what, *marker));
        }
    }
    let git_token: &[&str] = &["extraheader", "x-access-token:"];
    let mut workdirs: Vec<PathBuf> = std::env::current_dir().into_iter().collect();
    workdirs.extend(std::env::var_os("GITHUB_WORKSPACE").map(PathBuf::from));
    for dir in workdirs {
        candidates.push((
            dir.join(".git/config"),
            "a git token (actions/checkout's persisted credentials)",
            Some(git_token),
        ));
    }
    // A self-hosted runner's registration: `<runner>/_work/<repo>` is RUNNER_WORKSPACE.
    if let Some(workspace) = std::env::var_os("RUNNER_WORKSPACE").map(PathBuf::from)
        && let Some(root) = workspace.parent().and_then(Path::parent)
    {
        for name in [".credentials", ".credentials_rsaparams"] {
            candidates.push((root.join(name), "the runner's own credentials", None));
        }
    }
    if let Some(path) = std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS") {
        candidates.push((
            PathBuf::from(path),
            "Google Cloud credentials (GOOGLE_APPLICATION_CREDENTIALS)",
            None,
        ));
    }
    let mut found = Vec::new();
    for (path, what, marker) in candidates {
        if hidden.iter().any(|h| path.starts_with(h)) || !readable_by(&path, uid, gid) {
            continue;
        }
        let holds = match marker {
            None => true,
            Some(markers) => fs::read(&path).is_ok_and(|bytes| {
                let text = String::from_utf8_lossy(&bytes).to_ascii_lowercase();
                markers
                    .iter()
                    .any(|m| text.contains(&m.to_ascii_lowercase()))
            }),
        };
        if holds && !found.iter().any(|f: &Finding| f.path == path) {
            found.push(Finding { path, what });
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn readability_follows_the_mode_bits() {
        let dir = std::env::temp_dir().join(format!("egressd-secrets-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let file = dir.join("token");
        fs::write(&file, "x").unwrap();
        let me = nix::unistd::geteuid().as_raw();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(readable_by(&file, me, 12345));
        assert!(!readable_by(&file, 54321, 54321));
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(readable_by(&file, 54321, 54321));
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        if me != 54321 {
            assert!(
                !readable_by(&file, 54321, 54321),
                "the directory is not searchable"
            );
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn finds_a_persisted_checkout_token_in_a_home() {
        let home = std::env::temp_dir().join(format!("egressd-home-{}", std::process::id()));
        fs::create_dir_all(home.join(".docker")).unwrap();
        fs::set_permissions(&home, fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(home.join(".docker"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(
            home.join(".docker/config.json"),
            r#"{"auths":{"ghcr.io":{"auth":"eA=="}}}"#,
        )
        .unwrap();
        fs::set_permissions(
            home.join(".docker/config.json"),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        fs::write(
            home.join(".npmrc"),
            "registry=https://registry.npmjs.org/\n",
        )
        .unwrap();
        fs::set_permissions(home.join(".npmrc"), fs::Permissions::from_mode(0o644)).unwrap();
        let found = find_readable(54321, 54321, Some(&home), &[]);
        assert!(
            found
                .iter()
                .any(|f| f.path.ends_with(".docker/config.json")),
            "{found:?}"
        );
        assert!(
            !found.iter().any(|f| f.path.ends_with(".npmrc")),
            "no token in it: {found:?}"
        );
        let hidden = find_readable(54321, 54321, Some(&home), &[home.join(".docker")]);
        assert!(
            !hidden
                .iter()
                .any(|f| f.path.ends_with(".docker/config.json"))
        );
        fs::remove_dir_all(&home).unwrap();
    }
}
