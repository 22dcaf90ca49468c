// The action's main step: install egressd, start the daemon, attach it to this job's cgroup
// so every later step is firewalled, and tell TLS clients about the interception CA.
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const { spawn } = require('node:child_process');
const lib = require('./lib.js');

// `control-socket` is not a documented input: tests run several daemons at once.
const DEFAULT_SOCKET = '/run/egressd/control.sock';

// `install-dir` is not a documented input either: tests install somewhere harmless.
const DEFAULT_INSTALL_DIR = '/usr/local/bin';

/** Where the release assets are: `release-url`, else the action repository's release. */
function releaseBase() {
  const given = lib.input('release-url');
  if (given) return given.replace(/\/+$/, '');
  const repo = process.env.GITHUB_ACTION_REPOSITORY;
  if (!repo) throw new Error('GITHUB_ACTION_REPOSITORY is not set: pass the `binary` or `release-url` input');
  const version = lib.input('version') || 'latest';
  return version === 'latest'
    ? `https://github.com/${repo}/releases/latest/download`
    : `https://github.com/${repo}/releases/download/${version}`;
}

/**
 * The egressd binary: `binary`, or the release asset for this machine (as `cargo xtask
 * dist` names it), checksum-verified before it is installed.
 */
async function install(dir) {
  const given = lib.input('binary');
  if (given) return path.resolve(given);
  const arch = { x64: 'x86_64', arm64: 'aarch64' }[process.arch];
  if (!arch || process.platform !== 'linux') {
    throw new Error(`egressd runs on Linux x86_64 and aarch64, not ${process.platform}/${process.arch}`);
  }
  const base = releaseBase();
  const asset = `egressd-${arch}-linux`;
  const binary = Buffer.from(await download(`${base}/${asset}`));
  const listed = (await download(`${base}/${asset}.sha256`, 'text')).trim().split(/\s+/);
  const expected = (listed[0] || '').toLowerCase();
  if (!/^[0-9a-f]{64}$/.test(expected)) {
    throw new Error(`${base}/${asset}.sha256 does not start with a SHA-256 in hex`);
  }
  const actual = crypto.createHash('sha256').update(binary).digest('hex');
  if (actual !== expected) {
    throw new Error(`${asset}: sha256 ${actual} does not match the release's ${expected}; not installed`);
  }
  const staged = path.join(dir, 'egressd');
  fs.writeFileSync(staged, binary, { mode: 0o755 });
  // Root-owned, so the job cannot swap the binary that later `sudo egressd` calls run.
  const target = path.join(lib.input('install-dir') || DEFAULT_INSTALL_DIR, 'egressd');
  lib.run(lib.privileged(['install', '-m', '0755', '-o', 'root', '-g', 'root', staged, target]));
  fs.rmSync(staged, { force: true });
  console.log(`[egressd] installed ${asset} (sha256 ${actual}) from ${base} as ${target}`);
  return target;
}

async function download(url, kind = 'bytes') {
  const response = await fetch(url, { redirect: 'follow', signal: AbortSignal.timeout(120_000) });
  if (!response.ok) throw new Error(`downloading ${url}: HTTP ${response.status}`);
  return kind === 'text' ? response.text() : response.arrayBuffer();
}

/** `egressd run` arguments from the inputs. */
function runArgs(socket, auditLog) {
  const args = ['run', '--control-socket', socket, '--audit-log', auditLog];
  const allow = lib.list(lib.input('allow-domains'));
  if (allow.length) args.push('--allow-domains', allow.join(','));
  const block = lib.list(lib.input('block-domains'));
  if (block.length) args.push('--block-domains', block.join(','));
  const config = lib.input('config');
  if (config) args.push('--config', path.resolve(config));
  if (lib.input('github') === 'false') args.push('--no-github');
  const mode = lib.input('mode') || 'block';
  if (mode === 'audit-only') {
    args.push('--audit-only');
  } else if (mode !== 'block') {
    throw new Error(`mode: expected \`block\` or \`audit-only\`, got \`${mode}\``);
  }
  for (const line of lib.input('args').split('\n')) {
    args.push(...line.trim().split(/\s+/).filter(Boolean));
  }
  return args;
}

async function main() {
  const dir = path.join(process.env.RUNNER_TEMP || '/tmp', 'egressd');
  fs.mkdirSync(dir, { recursive: true });
  const socket = lib.input('control-socket') || DEFAULT_SOCKET;
  const auditLog = path.join(dir, 'audit.jsonl');
  const daemonLog = path.join(dir, 'daemon.log');
  const bin = await install(dir);

  // The daemon starts in this job's cgroup and moves itself out when it attaches to it.
  const argv = lib.privileged([bin, ...runArgs(socket, auditLog)]);
  console.log(`[egressd] starting: ${argv.join(' ')}`);
  const log = fs.openSync(daemonLog, 'a');
  const daemon = spawn(argv[0], argv.slice(1), {
    detached: true,
    stdio: ['ignore', log, log],
  });
  daemon.unref();
  lib.saveState('bin', bin);
  lib.saveState('socket', socket);
  lib.saveState('audit_log', auditLog);
  lib.saveState('daemon_log', daemonLog);
  lib.saveState('mode', lib.input('mode') || 'block');

  try {
    lib.run(lib.privileged([bin, 'status', '--wait', '30', '--control-socket', socket]));
  } catch (e) {
    const tail = fs.existsSync(daemonLog) ? fs.readFileSync(daemonLog, 'utf8') : '';
    throw new Error(`the egressd daemon did not start:\n${tail}\n${e.message}`);
  }
  process.stdout.write(
    lib.run(lib.privileged([bin, 'attach', '--job', '--control-socket', socket])),
  );
  const status = JSON.parse(
    lib.run(lib.privileged([bin, 'status', '--json', '--control-socket', socket])),
  ).status;
  lib.saveState('pid', String(status.pid));
  lib.setOutput('audit-log', auditLog);
  const bundle = status.ca_bundle || '';
  lib.setOutput('ca-bundle', bundle);
  if (bundle) {
    // Later steps' TLS clients trust the interception CA (the bundle holds the system
    // roots too).
    for (const variable of ['SSL_CERT_FILE', 'NODE_EXTRA_CA_CERTS', 'REQUESTS_CA_BUNDLE',
      'CURL_CA_BUNDLE', 'GIT_SSL_CAINFO']) {
      lib.appendKv('GITHUB_ENV', variable, bundle);
    }
  }
  console.log(`[egressd] firewalling this job: ${status.policy_entries} policy entries, mode ${lib.input('mode') || 'block'}`);
}

main().catch((e) => {
  console.log(`::error title=egressd::${String(e.message).replace(/\n/g, '%0A')}`);
  process.exitCode = 1;
});
