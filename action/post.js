// The action's post step: release the job, write the audit summary to the job summary, stop
// the daemon. Runs last (post steps run in reverse order), so later actions' post steps are
// still firewalled.
'use strict';

const fs = require('node:fs');
const lib = require('./lib.js');

function state(key) {
  return process.env[`STATE_${key}`] || '';
}

async function post() {
  const bin = state('bin');
  const socket = state('socket');
  if (!bin || !socket) {
    console.log('[egressd] the main step did not start the daemon; nothing to do');
    return;
  }
  const failures = [];
  try {
    process.stdout.write(
      lib.run(lib.privileged([bin, 'detach', '--all', '--control-socket', socket])),
    );
  } catch (e) {
    failures.push(e.message);
  }
  const auditLog = state('audit_log');
  if (auditLog && fs.existsSync(auditLog)) {
    const argv = [bin, 'audit', '--step-summary', '--format', 'markdown'];
    if (state('mode') === 'audit-only') argv.push('--suggest');
    argv.push(auditLog);
    try {
      process.stdout.write(lib.run(lib.privileged(argv)));
    } catch (e) {
      failures.push(e.message);
    }
  }
  const pid = state('pid');
  if (pid) {
    try {
      lib.run(lib.privileged(['kill', '-TERM', pid]));
      // Bounded wait for the daemon to release everything and exit.
      const deadline = Date.now() + 10000;
      while (fs.existsSync(`/proc/${pid}`) && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    } catch (e) {
      failures.push(e.message);
    }
  }
  const daemonLog = state('daemon_log');
  if (daemonLog && fs.existsSync(daemonLog)) {
    console.log('[egressd] daemon log:');
    process.stdout.write(fs.readFileSync(daemonLog, 'utf8'));
  }
  if (failures.length) throw new Error(failures.join('\n'));
}

post().catch((e) => {
  console.log(`::warning title=egressd::${String(e.message).replace(/\n/g, '%0A')}`);
});
