#!/usr/bin/env node
// A `solc`-compatible front end for the official wasm build (npm `solc`), so that py-solc-x and
// ape-solidity can drive it like the native binary. It accepts only the flags those two send;
// anything else is an error rather than a silent no-op. See DEVELOPERS.md for the traps.
'use strict';
const fs = require('fs');
const path = require('path');

const VERSION_CACHE = path.join(__dirname, '..', 'node_modules', '.cache', 'solc-shim-version.txt');

function writeAll(fd, text) {
  // process.exit() after a piped write truncates at 64 KiB: write synchronously, then set exitCode.
  const buf = Buffer.from(text, 'utf8');
  let off = 0;
  while (off < buf.length) {
    try {
      off += fs.writeSync(fd, buf, off, buf.length - off);
    } catch (e) {
      if (e.code !== 'EAGAIN') throw e;
    }
  }
}

function loadSolc() {
  return require(path.join(__dirname, '..', 'node_modules', 'solc'));
}

function versionString() {
  try {
    return fs.readFileSync(VERSION_CACHE, 'utf8');
  } catch (_) {
    const v = loadSolc().version(); // e.g. 0.8.30+commit.73712a01.Emscripten.clang
    const text = 'solc, the solidity compiler commandline interface\nVersion: ' + v + '\n';
    fs.mkdirSync(path.dirname(VERSION_CACHE), { recursive: true });
    fs.writeFileSync(VERSION_CACHE, text);
    return text;
  }
}

function parseArgs(argv) {
  const opts = { version: false, standardJson: false, basePath: null, allowPaths: [], includePaths: [], other: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const take = () => argv[++i];
    if (a === '--version') opts.version = true;
    else if (a === '--standard-json') opts.standardJson = true;
    else if (a === '--base-path') opts.basePath = take();
    else if (a.startsWith('--base-path=')) opts.basePath = a.slice(12);
    else if (a === '--allow-paths') opts.allowPaths.push(...take().split(','));
    else if (a.startsWith('--allow-paths=')) opts.allowPaths.push(...a.slice(14).split(','));
    else if (a === '--include-path') opts.includePaths.push(take());
    else if (a === '--no-color' || a === '--pretty-json') { /* cosmetic, ignored */ }
    else opts.other.push(a);
  }
  return opts;
}

function makeImportResolver(roots) {
  return function findImports(p) {
    const candidates = path.isAbsolute(p) ? [p] : roots.map((r) => path.resolve(r, p));
    for (const c of candidates) {
      if (fs.existsSync(c)) return { contents: fs.readFileSync(c, 'utf8') };
    }
    return { error: 'File not found: ' + p + ' (searched ' + roots.join(', ') + ')' };
  };
}

function main() {
  const opts = parseArgs(process.argv.slice(2));
  if (opts.version) {
    writeAll(1, versionString());
    return 0;
  }
  if (!opts.standardJson) {
    writeAll(2, 'solc-shim: only --version and --standard-json are supported (got: ' +
      process.argv.slice(2).join(' ') + '). Use standard JSON input (py-solc-x compile_standard).\n');
    return 2;
  }
  if (opts.other.length) {
    writeAll(2, 'solc-shim: unsupported flags with --standard-json: ' + opts.other.join(' ') + '\n');
    return 2;
  }
  const input = fs.readFileSync(0, 'utf8');
  const roots = [opts.basePath || process.cwd(), ...opts.includePaths, ...opts.allowPaths].filter(Boolean);
  const out = loadSolc().compile(input, { import: makeImportResolver(roots) });
  writeAll(1, out);
  return 0;
}

process.exitCode = main();
