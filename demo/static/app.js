// Upload page of the flask-tus demo. Uses the global `tus` from vendor/tus.min.js.
(() => {
  "use strict";

  const LIST_URL = "/uploads.json";
  const endpoint = document.body.dataset.endpoint;

  const fileInput = document.getElementById("file");
  const uploadButton = document.getElementById("upload");
  const pauseButton = document.getElementById("pause");
  const resumeButton = document.getElementById("resume");
  const progressBar = document.getElementById("progress");
  const statusText = document.getElementById("status");
  const uploadList = document.getElementById("uploads");

  const supported = typeof tus !== "undefined" && tus.isSupported;
  let upload = null;

  function formatBytes(bytes) {
    if (bytes < 1024) return `${bytes} bytes`;
    const units = ["KiB", "MiB", "GiB", "TiB"];
    let value = bytes;
    let unit = -1;
    do {
      value /= 1024;
      unit += 1;
    } while (value >= 1024 && unit < units.length - 1);
    return `${value.toFixed(1)} ${units[unit]}`;
  }

  // Status is always set through textContent: file names and server
  // messages must never be interpreted as HTML.
  function setStatus(text, kind = "", link = null) {
    statusText.textContent = text;
    statusText.className = kind;
    if (link) {
      const a = document.createElement("a");
      a.href = link;
      a.textContent = link;
      statusText.append(" ", a);
    }
  }

  function setButtons({ canUpload, canPause, canResume }) {
    uploadButton.disabled = !canUpload;
    pauseButton.disabled = !canPause;
    resumeButton.disabled = !canResume;
  }

  const IDLE = { canUpload: true, canPause: false, canResume: false };
  const RUNNING = { canUpload: false, canPause: true, canResume: false };
  const STOPPED = { canUpload: true, canPause: false, canResume: true };

  function showProgress(sent, total) {
    const percent = total > 0 ? (sent / total) * 100 : 100;
    progressBar.value = percent;
    setStatus(
      `Uploading: ${percent.toFixed(1)}% (${formatBytes(sent)} of ${formatBytes(total)})`,
    );
  }

  function startUpload() {
    const file = fileInput.files[0];
    if (!file) {
      setStatus("Choose a file first.", "error");
      return;
    }

    const current = new tus.Upload(file, {
      endpoint,
      chunkSize: 5 * 1024 * 1024,
      retryDelays: [0, 1000, 3000, 5000],
      // Without this, picking the same file again after it finished would
      // "resume" the completed upload instead of sending a new one.
      removeFingerprintOnSuccess: true,
      metadata: {
        filename: file.name,
        filetype: file.type || "application/octet-stream",
      },
      onProgress: showProgress,
      onSuccess() {
        progressBar.value = 100;
        setStatus(
          `Finished: ${file.name} (${formatBytes(file.size)}) is at`,
          "success",
          current.url,
        );
        setButtons(IDLE);
        refreshList();
      },
      onError(error) {
        setStatus(`Failed: ${error.message || error}`, "error");
        setButtons(STOPPED);
      },
    });
    upload = current;

    progressBar.value = 0;
    setButtons(RUNNING);
    setStatus(`Starting upload of ${file.name}…`);

    current
      .findPreviousUploads()
      .then((previous) => {
        if (previous.length > 0) {
          current.resumeFromPreviousUpload(previous[0]);
          setStatus(`Resuming earlier upload of ${file.name}…`);
        }
        current.start();
      })
      .catch((error) => {
        setStatus(`Failed: ${error.message || error}`, "error");
        setButtons(IDLE);
      });
  }

  function pauseUpload() {
    if (!upload) return;
    setButtons(STOPPED);
    setStatus(`Paused at ${progressBar.value.toFixed(1)}%.`);
    upload.abort();
  }

  function resumeUpload() {
    if (!upload) return;
    setButtons(RUNNING);
    setStatus("Resuming…");
    upload.start();
  }

  function renderList(entries) {
    uploadList.replaceChildren();
    if (entries.length === 0) {
      const empty = document.createElement("li");
      empty.className = "empty";
      empty.textContent = "No finished uploads yet.";
      uploadList.append(empty);
      return;
    }
    for (const entry of entries) {
      const item = document.createElement("li");
      const link = document.createElement("a");
      link.href = entry.url;
      link.textContent = entry.filename || entry.id;
      const size = document.createElement("span");
      size.className = "size";
      size.textContent = formatBytes(entry.size);
      size.title = `${entry.size} bytes`;
      item.append(link, " ", size);
      uploadList.append(item);
    }
  }

  function refreshList() {
    return fetch(LIST_URL, { headers: { Accept: "application/json" } })
      .then((response) => {
        if (!response.ok) throw new Error(`HTTP ${response.status}`);
        return response.json();
      })
      .then(renderList)
      .catch((error) => {
        uploadList.replaceChildren();
        const item = document.createElement("li");
        item.className = "error";
        item.textContent = `Failed to load the upload list: ${error.message}`;
        uploadList.append(item);
      });
  }

  fileInput.addEventListener("change", () => {
    // Leave a running upload alone; otherwise forget the old (paused or
    // failed) upload so that Resume cannot continue a file no longer chosen.
    if (!supported || !pauseButton.disabled) return;
    const file = fileInput.files[0];
    upload = null;
    setButtons(IDLE);
    progressBar.value = 0;
    if (!file) {
      setStatus("Choose a file to upload.");
      return;
    }
    setStatus(`Ready: ${file.name} (${formatBytes(file.size)}).`);
  });
  uploadButton.addEventListener("click", startUpload);
  pauseButton.addEventListener("click", pauseUpload);
  resumeButton.addEventListener("click", resumeUpload);

  if (!supported) {
    setStatus(
      "Failed: tus-js-client is not available (was static/vendor/tus.min.js built?).",
      "error",
    );
    setButtons({ canUpload: false, canPause: false, canResume: false });
  } else {
    setButtons(IDLE);
  }
  refreshList();
})();
