// Drives tus-js-client (the Node build installed in demo/node_modules by `make test-deps`)
// against a tus endpoint, for tests/test_tus_js_client.py.
//
//   node tus_client.mjs MODE ENDPOINT FILE [OPTIONS_JSON]
//
// MODE is "upload" (one upload), "resume" (abort after `abortAfter` bytes, then a new Upload
// found through the same URL storage finishes it) or "parallel" (`parallelUploads` partial
// uploads joined by concatenation). Prints one JSON object on stdout; on failure prints
// {"error": ...} and exits with status 1.
import { createReadStream, mkdtempSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";

// Resolved from the demo's package.json, so the script works from any working directory.
const require = createRequire(new URL("../../demo/package.json", import.meta.url));
const tus = require("tus-js-client");

const [mode, endpoint, filePath, rawOptions] = process.argv.slice(2);
const options = rawOptions ? JSON.parse(rawOptions) : {};
const metadata = options.metadata ?? { filename: "data.bin", filetype: "application/octet-stream" };

function baseOptions(extra) {
  return {
    endpoint,
    metadata,
    chunkSize: options.chunkSize ?? 1024 * 1024,
    retryDelays: [0, 200, 500, 1000, 2000],
    ...extra,
  };
}

// Runs one Upload to completion (or until `abortAfter` bytes were sent, then aborts it) and
// resolves with the upload, whether it was aborted, and the requests it made.
function run(extra, { abortAfter = null, resume = false } = {}) {
  return new Promise((resolve, reject) => {
    const requests = [];
    // Parallel uploads interleave their requests: match each response to its own request.
    const records = new WeakMap();
    let aborted = false;
    let upload = null;
    upload = new tus.Upload(
      createReadStream(filePath),
      baseOptions({
        ...extra,
        onBeforeRequest(req) {
          const record = { method: req.getMethod(), url: req.getURL() };
          records.set(req, record);
          requests.push(record);
        },
        onAfterResponse(req, res) {
          const record = records.get(req);
          record.status = res.getStatus();
          record.offset = res.getHeader("Upload-Offset") ?? null;
        },
        onProgress(sent) {
          if (abortAfter !== null && !aborted && sent >= abortAfter) {
            aborted = true;
            upload.abort().then(() => resolve({ upload, aborted: true, requests }), reject);
          }
        },
        onSuccess() {
          resolve({ upload, aborted: false, requests });
        },
        onError: reject,
      }),
    );
    if (!resume) {
      upload.start();
      return;
    }
    upload
      .findPreviousUploads()
      .then((previous) => {
        if (previous.length === 0) throw new Error("no previous upload found to resume");
        upload.resumeFromPreviousUpload(previous[0]);
        upload.start();
      })
      .catch(reject);
  });
}

async function main() {
  if (mode === "upload") {
    const { upload } = await run({});
    return { url: upload.url };
  }
  if (mode === "resume") {
    const storageFile = options.urlStorage ?? join(mkdtempSync(join(tmpdir(), "tus-js-")), "urls.json");
    const resumable = { urlStorage: new tus.FileUrlStorage(storageFile) };
    const first = await run(resumable, { abortAfter: options.abortAfter ?? 1 });
    if (!first.aborted) throw new Error("the first upload finished before it could be aborted");
    const second = await run(resumable, { resume: true });
    // The new Upload's first request is the HEAD asking where the server stands.
    const head = second.requests.find((r) => r.method === "HEAD");
    return {
      url: second.upload.url,
      firstUrl: first.upload.url,
      resumedFrom: head ? Number(head.offset) : null,
      secondRequests: second.requests.map((r) => r.method),
    };
  }
  if (mode === "parallel") {
    const { upload, requests } = await run({
      parallelUploads: options.parallelUploads ?? 3,
    });
    const created = requests.filter((r) => r.method === "POST" && r.status === 201);
    return { url: upload.url, posts: created.length };
  }
  throw new Error(`unknown mode ${mode}`);
}

main().then(
  (result) => {
    process.stdout.write(`${JSON.stringify(result)}\n`);
  },
  (error) => {
    process.stdout.write(`${JSON.stringify({ error: String(error?.message ?? error) })}\n`);
    process.exit(1);
  },
);
