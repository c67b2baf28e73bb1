#!/usr/bin/env node
// The real-browser test and benchmark of kiln serve's web UI: headless
// Debian chromium driven by playwright-core. host/tests/all/ui_browser.rs
// starts a real `kiln serve` and calls the check; `kiln bench ui` calls the
// benchmark. Nothing here starts Kiln or talks to anything but the URL given.
//
//   node run.mjs check <base-url> --run <id> [--running-job <id>] --shots <dir>
//       Walks the pages of run <id> (see check.mjs): with --running-job, first
//       watches that job's log grow live; then waits for the run to finish.
//       Prints `ok: …` lines, then one `RESULT {json}` line; exit status 0
//       when every check passed, 1 with a `FAIL: …` line otherwise, 2 on
//       bad usage.
//   node run.mjs --bench <run-page-url> [--repeat <n>]
//       Loads the run page <n> times (default 5) and prints one JSON object:
//       how long the browser took to show the job graph (see bench.mjs).
//
// Environment: KILN_CHROMIUM, the browser to drive (default /usr/bin/chromium).

import { chromium } from 'playwright-core';

import { bench } from './bench.mjs';
import { check } from './check.mjs';

const USAGE = `usage: node run.mjs check <base-url> --run <id> [--running-job <id>] --shots <dir>
       node run.mjs --bench <run-page-url> [--repeat <n>]`;

/** argv after the script → { positional: [...], flags: { name: value } } */
function parse(argv) {
  const positional = [];
  const flags = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a.startsWith('--')) {
      const value = argv[i + 1];
      if (value === undefined || value.startsWith('--')) usage(`${a} needs a value`);
      flags[a.slice(2)] = value;
      i++;
    } else {
      positional.push(a);
    }
  }
  return { positional, flags };
}

function usage(why) {
  console.error(`run.mjs: ${why}\n${USAGE}`);
  process.exit(2);
}

function id(flags, name, required) {
  const v = flags[name];
  if (v === undefined) {
    if (required) usage(`--${name} is required`);
    return undefined;
  }
  if (!/^[0-9]+$/.test(v)) usage(`--${name} must be a number, not ${JSON.stringify(v)}`);
  return Number(v);
}

async function launch() {
  const executablePath = process.env.KILN_CHROMIUM || '/usr/bin/chromium';
  try {
    return await chromium.launch({ executablePath, args: ['--no-sandbox'], headless: true });
  } catch (e) {
    console.error(
      `FAIL: cannot start ${executablePath} (${e.message.split('\n')[0]}); run .ci/setup-browser`,
    );
    process.exit(1);
  }
}

async function main() {
  const { positional, flags } = parse(process.argv.slice(2));
  if (flags.bench !== undefined) {
    const repeat = flags.repeat === undefined ? 5 : id(flags, 'repeat', true);
    if (repeat < 1) usage('--repeat must be at least 1');
    const browser = await launch();
    try {
      console.log(JSON.stringify(await bench(browser, new URL(flags.bench).href, repeat)));
    } finally {
      await browser.close();
    }
    return;
  }
  if (positional[0] !== 'check' || positional.length !== 2) usage('expected `check <base-url>` or `--bench <url>`');
  const base = new URL(positional[1]).origin;
  const options = {
    base,
    run: id(flags, 'run', true),
    runningJob: id(flags, 'running-job', false),
    shots: flags.shots ?? usage('--shots is required'),
  };
  const browser = await launch();
  try {
    await check(browser, options);
  } finally {
    await browser.close();
  }
}

main().catch((e) => {
  console.error(`FAIL: ${e.stack || e}`);
  process.exit(1);
});
