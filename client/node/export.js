#!/usr/bin/env node
// Node.js client of iotda-export: exports a batch task's sub-task results and downloads the zip.
//
//   cd client/node && npm ci
//   node export.js --address 127.0.0.1:50051 --token TOKEN --project PROJECT_ID --task-id BATCH_TASK_ID --out export.zip
//   node export.js --export-id EXPORT_TASK_ID --out export.zip      # watch + download an existing export
//
// --address, --token and --project fall back to IOTDA_EXPORT_ADDRESS, IOTDA_EXPORT_TOKEN and
// IOTDA_EXPORT_PROJECT (the address defaults to 127.0.0.1:50051). TLS: an https://HOST:PORT address, or
// --tls-ca FILE (the CA of the server's certificate; env IOTDA_EXPORT_TLS_CA); mutual TLS adds
// --tls-cert FILE --tls-key FILE (env IOTDA_EXPORT_CLIENT_CERT, IOTDA_EXPORT_CLIENT_KEY), and then
// --token may be left out when the server binds that certificate to a principal. --out is a file, or a directory for
// the server's name export-<id>.zip (default: the current directory). The protos are loaded at run
// time from the repository's protos/. Progress goes to stderr (one JSON line per WatchProgress
// event), the summary to stdout as one JSON line {export_task_id, file, bytes, sha256}.
// Exit codes: 0 done, 1 a refused call or a failed export, 2 bad usage.
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const { parseArgs } = require('node:util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

// grpc-js sends the address it dials as the TLS server name, also when it is an IP address, which
// Node then reports (DEP0123) on stderr, where this client's output is one JSON line per event: not
// ours to fix, and harmless (the certificate is still checked against the address).
const emitWarning = process.emitWarning;
process.emitWarning = (warning, ...rest) => {
  const code = typeof rest[0] === 'object' && rest[0] ? rest[0].code : rest[1];
  if (code === 'DEP0123') return;
  emitWarning.call(process, warning, ...rest);
};

const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'protos');
const TERMINAL = new Set(['Success', 'Failed']); // ExportTask.status: Processing | Success | Failed

class UsageError extends Error {}

function options(argv) {
  const flags = ['address', 'token', 'project', 'task-id', 'export-id', 'out', 'tls-ca', 'tls-cert', 'tls-key'];
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: Object.fromEntries([...flags.map((f) => [f, { type: 'string' }]), ['help', { type: 'boolean' }]]),
    }));
  } catch (err) {
    throw new UsageError(err.message);
  }
  if (values.help) {
    process.stdout.write('usage: node export.js [--address HOST:PORT] [--token TOKEN] [--project PROJECT_ID]\n'
      + '                      (--task-id BATCH_TASK_ID | --export-id EXPORT_TASK_ID) [--out FILE_OR_DIR]\n'
      + '                      [--tls-ca CA_FILE] [--tls-cert CERT_FILE --tls-key KEY_FILE]\n');
    process.exit(0);
  }
  const o = {
    address: values.address || process.env.IOTDA_EXPORT_ADDRESS || '127.0.0.1:50051',
    token: values.token || process.env.IOTDA_EXPORT_TOKEN,
    project: values.project || process.env.IOTDA_EXPORT_PROJECT,
    taskId: values['task-id'],
    exportId: values['export-id'],
    out: values.out,
    tlsCa: values['tls-ca'] || process.env.IOTDA_EXPORT_TLS_CA,
    tlsCert: values['tls-cert'] || process.env.IOTDA_EXPORT_CLIENT_CERT,
    tlsKey: values['tls-key'] || process.env.IOTDA_EXPORT_CLIENT_KEY,
  };
  const scheme = /^(https|grpcs|http|grpc):\/\//i.exec(o.address);
  o.secured = scheme ? /^(https|grpcs)$/i.test(scheme[1]) : Boolean(o.tlsCa || o.tlsCert);
  if (scheme) o.address = o.address.slice(scheme[0].length).replace(/\/+$/, '');
  if (!o.tlsCert !== !o.tlsKey) throw new UsageError('a client certificate needs its key: pass --tls-cert and --tls-key');
  if (!o.token && !o.tlsCert) throw new UsageError('no token: pass --token or set IOTDA_EXPORT_TOKEN');
  if (!o.project) throw new UsageError('no project: pass --project or set IOTDA_EXPORT_PROJECT');
  if (!o.taskId === !o.exportId) throw new UsageError('pass exactly one of --task-id and --export-id');
  return o;
}

function readPem(file, what) {
  let data;
  try {
    data = fs.readFileSync(file);
  } catch (err) {
    throw new UsageError(`cannot read the ${what} file ${file}: ${err.code || err.message}`);
  }
  if (!data.includes('-----BEGIN ')) throw new UsageError(`the ${what} file ${file} is not PEM`);
  return data;
}

function channelCredentials(o) {
  if (!o.secured) return grpc.credentials.createInsecure();
  return grpc.credentials.createSsl(o.tlsCa ? readPem(o.tlsCa, 'CA') : null,
    o.tlsKey ? readPem(o.tlsKey, 'client key') : null, o.tlsCert ? readPem(o.tlsCert, 'client certificate') : null);
}

// What grpc-js reports for a failed connection -> what to fix (first match wins; `secured`: this
// client spoke TLS). The Python client's table (client/iotda_export_client/tls.py) in other words.
const EXPLANATIONS = [
  [/certificate has expired|CERT_HAS_EXPIRED/i, true, "the server's certificate has expired (or is not yet valid): renew it on the server"],
  [/does not match certificate|Hostname\/IP does not match|ERR_TLS_CERT_ALTNAME_INVALID/i, true,
    "the server's certificate does not name the host you called: call it by a name in its subject alternative names"],
  [/wrong version number|WRONG_VERSION_NUMBER|packet length too long/i, true,
    'the server does not speak TLS: call it with a plaintext address (no https://, no --tls-ca)'],
  [/self.signed|unable to get local issuer|unable to verify the first certificate|CERTIFICATE_VERIFY_FAILED/i, true,
    "the server's certificate is not signed by the CA you trust: pass the CA that signed it with --tls-ca"],
  [/certificate required|alert number 116/i, true,
    'the server requires a client certificate: pass --tls-cert and --tls-key signed by its client CA'],
  [/bad certificate|unknown ca|certificate unknown|alert number 4[268]/i, true,
    "the server refused your client certificate: it must be signed by the server's client CA and valid now"],
  // An accepted connection that closes before HTTP/2 starts (grpc-js: "Failed to connect (<time>)").
  [/Connection dropped|socket closed|ECONNRESET|Protocol error|Failed to connect \(/i, false,
    'the server closed the plaintext connection: it expects TLS; use an https:// address and --tls-ca'],
  [/Connection dropped|socket closed|ECONNRESET|Failed to connect \(/i, true,
    'the server closed the connection during the TLS handshake: it requires a client certificate signed by its'
    + ' client CA (--tls-cert and --tls-key), or refused the one you sent'],
];

function explain(details, secured) {
  for (const [pattern, whenSecured, text] of EXPLANATIONS) {
    if (whenSecured === secured && pattern.test(details || '')) return text;
  }
  return null;
}

function exportService(o) {
  const definition = protoLoader.loadSync('iotda/export/v1/export_task.proto', {
    includeDirs: [PROTO_ROOT], keepCase: true, longs: String, enums: String, defaults: true, oneofs: true,
  });
  const { ExportTaskService } = grpc.loadPackageDefinition(definition).iotda.export.v1;
  return new ExportTaskService(o.address, channelCredentials(o));
}

// Follows WatchProgress until the stream ends; resolves with the task's last state.
function watch(client, metadata, request) {
  return new Promise((resolve, reject) => {
    let last = null;
    const call = client.WatchProgress(request, metadata);
    call.on('data', ({ export_task: t, sequence, heartbeat }) => {
      last = t;
      process.stderr.write(JSON.stringify({ export_task_id: t.export_task_id, status: t.status, progress: t.progress,
        export_count: t.export_count, sequence, heartbeat }) + '\n');
    });
    call.on('error', reject);
    call.on('end', () => (last && TERMINAL.has(last.status) ? resolve(last)
      : reject(new Error(`the progress stream ended before the export finished (status ${last && last.status})`))));
  });
}

// Streams ShowExportTask into `<out>.part`, checks size and sha256, then renames it to `out`.
function download(client, metadata, request, out) {
  return new Promise((resolve, reject) => {
    const hash = crypto.createHash('sha256');
    let settled = false, fd = null, part = null, file = null, total = 0, expected = '', done = 0;
    const fail = (err) => {
      if (settled) return; // e.g. the CANCELLED that follows our own cancel()
      settled = true;
      if (fd !== null) fs.closeSync(fd);
      if (part !== null) fs.rmSync(part, { force: true });
      reject(err);
    };
    const call = client.ShowExportTask(request, metadata);
    call.on('data', (msg) => {
      if (settled) return;
      try {
        if (fd === null) { // the first message announces the file
          total = Number(msg.total_size);
          expected = msg.sha256;
          const intoDir = !out || fs.statSync(out, { throwIfNoEntry: false })?.isDirectory();
          file = path.resolve(intoDir ? path.join(out || '.', path.basename(msg.file_name)) : out);
          part = `${file}.part`;
          fd = fs.openSync(part, 'w');
        }
        if (Number(msg.offset) !== done) throw new Error(`chunk at offset ${msg.offset}, expected ${done}`);
        const data = msg.body.data;
        for (let written = 0; written < data.length;) written += fs.writeSync(fd, data, written);
        hash.update(data);
        done += data.length;
      } catch (err) {
        fail(err);
        call.cancel();
      }
    });
    call.on('error', fail);
    call.on('end', () => {
      if (settled) return;
      try {
        if (fd === null) throw new Error('the server sent no data');
        const sha256 = hash.digest('hex');
        if (done !== total || sha256 !== expected) {
          throw new Error(`download mismatch: ${done} of ${total} bytes, sha256 ${sha256} instead of ${expected}`);
        }
        fs.fsyncSync(fd);
        fs.closeSync(fd);
        fd = null;
        fs.renameSync(part, file);
        settled = true;
        resolve({ file, bytes: done, sha256 });
      } catch (err) {
        fail(err);
      }
    });
  });
}

async function main() {
  const o = options(process.argv.slice(2));
  secured = o.secured;
  const client = exportService(o);
  const metadata = new grpc.Metadata();
  if (o.token) metadata.set('authorization', `Bearer ${o.token}`);
  try {
    let id = o.exportId;
    if (!id) {
      const { export_task } = await new Promise((resolve, reject) => client.CreateExportTask({
        project_id: o.project, resource_type: 'BatchTask', resource_condition: { task_id: o.taskId },
      }, metadata, (err, res) => (err ? reject(err) : resolve(res))));
      id = export_task.export_task_id;
    }
    const request = { project_id: o.project, export_task_id: id };
    const final = await watch(client, metadata, request);
    if (final.status !== 'Success') throw new Error(`export ${id} ${final.status}: ${final.status_desc || ''}`);
    const { file, bytes, sha256 } = await download(client, metadata, request, o.out);
    process.stdout.write(JSON.stringify({ export_task_id: id, file, bytes, sha256 }) + '\n');
  } finally {
    client.close();
  }
}

let secured = false;
main().catch((err) => {
  const explanation = err.code === grpc.status.UNAVAILABLE ? explain(err.details, secured) : null;
  if (explanation) {
    process.stderr.write(`error: cannot connect: ${explanation}\n`);
  } else if (typeof err.code === 'number' && 'details' in err) { // a gRPC status: its code name and details only
    process.stderr.write(`error: ${grpc.status[err.code] || err.code} ${err.details}\n`);
  } else {
    process.stderr.write(`error: ${err.message}\n`);
  }
  process.exitCode = err instanceof UsageError ? 2 : 1;
});
