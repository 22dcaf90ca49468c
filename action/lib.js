// Helpers shared by main.js and post.js. No dependencies: only Node's standard library, so
// the action runs from a checkout without `npm install` or a bundling step.
'use strict';

const { execFileSync } = require('node:child_process');
const fs = require('node:fs');

/** The value of input NAME (GitHub passes inputs as INPUT_<NAME> variables). */
function input(name) {
  const key = `INPUT_${name.replace(/ /g, '_').toUpperCase()}`;
  return (process.env[key] || '').trim();
}

/** Items of a comma- or newline-separated input, blanks dropped. */
function list(value) {
  return value.split(/[,\n]/).map((s) => s.trim()).filter(Boolean);
}

/** Appends `key=value` to the file named by environment variable VAR (GITHUB_ENV, ...). */
function appendKv(variable, key, value) {
  const file = process.env[variable];
  if (!file) return;
  if (/[\r\n]/.test(value)) throw new Error(`${key}: value has a newline`);
  fs.appendFileSync(file, `${key}=${value}\n`);
}

/** Saves state for the post step (read back as STATE_<key>). */
function saveState(key, value) {
  appendKv('GITHUB_STATE', key, value);
}

/** Sets an output of this step. */
function setOutput(key, value) {
  appendKv('GITHUB_OUTPUT', key, value);
}

/** argv prefixed with sudo when not root (GitHub-hosted runners: passwordless sudo). */
function privileged(argv) {
  if (process.getuid && process.getuid() === 0) return argv;
  return ['sudo', '-n', '-E', ...argv];
}

/** Runs argv, echoing it; returns stdout. Throws with stderr on failure. */
function run(argv, options = {}) {
  const shown = argv.join(' ');
  console.log(`[egressd] $ ${shown}`);
  try {
    return execFileSync(argv[0], argv.slice(1), {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
      ...options,
    });
  } catch (e) {
    const detail = [e.stdout, e.stderr].filter(Boolean).join('\n').trim();
    throw new Error(`\`${shown}\` failed${detail ? `:\n${detail}` : ''}`);
  }
}

/** Whether `command` is on PATH. */
function have(command) {
  try {
    execFileSync('sh', ['-c', `command -v ${command}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

module.exports = { input, list, appendKv, saveState, setOutput, privileged, run, have };
