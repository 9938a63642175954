/* cs_hub: GPT-2 models from the Hugging Face Hub, kept in huggingface_hub's cache.
 *
 * A model name is a Hub repo id, optionally with a revision: `distilgpt2`,
 * `openai-community/gpt2`, `ORG/NAME@REVISION` (branch, tag or commit). The repo id is
 * used as given (the Hub itself redirects legacy names such as `distilgpt2`).
 *
 * Cache layout (the one huggingface_hub and transformers use, so each reads the
 * other's files):
 *
 *   CACHE/models--ORG--NAME/blobs/ETAG                 file contents, named by ETag
 *   CACHE/models--ORG--NAME/snapshots/COMMIT/FILE  ->  ../../blobs/ETAG (relative symlink)
 *   CACHE/models--ORG--NAME/refs/REVISION              the commit hash, no newline
 *   CACHE/models--ORG--NAME/.no_exist/COMMIT/FILE      empty: FILE is absent upstream
 *   CACHE/.locks/models--ORG--NAME/ETAG.lock           flock(2) lock held while downloading
 *
 * CACHE is $HF_HUB_CACHE, else $HUGGINGFACE_HUB_CACHE, else $HF_HOME/hub, else
 * $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub.
 *
 * Environment (read by cs_hub_env_init only):
 *   HF_ENDPOINT       Hub base URL (default https://huggingface.co)
 *   HF_TOKEN          access token, sent as `Authorization: Bearer` to the Hub only, never
 *                     to the CDN a download is redirected to; else the file $HF_TOKEN_PATH
 *                     or $HF_HOME/token that `huggingface-cli login` writes
 *   HF_HUB_OFFLINE    1/true/yes/on: never touch the network (TRANSFORMERS_OFFLINE too)
 *   HF_HUB_ETAG_TIMEOUT  seconds allowed to connect to the Hub or its CDN (default
 *                     CS_HUB_CONNECT_TIMEOUT_S; huggingface_hub's metadata timeout). A connection
 *                     that could not be made at all is not retried: with no route to the Hub
 *                     a command fails within this time instead of minutes.
 *
 * Files: config.json, model.safetensors, vocab.json, merges.txt (required) and
 * generation_config.json (optional: a 404 for it is recorded in .no_exist).
 *
 * Downloads go to blobs/ETAG.incomplete under the per-blob lock, resume with an HTTP
 * Range request when a partial file is there (also after an interrupted earlier run),
 * are checked against the size the Hub announced and, for LFS files (whose ETag is the
 * SHA-256 of the content), against that SHA-256, then fsync'd and renamed into place.
 * Snapshot links and refs are written only after every blob is in place, each by an
 * atomic rename, so a failed pull leaves no partial snapshot and two concurrent pulls
 * of the same model both succeed (the second waits on the lock, then reuses the blob).
 *
 * Errors: every function returns 0 on success and -1 with a one-line message in `err`
 * naming the model, file, URL or limit at fault; nothing here exits or aborts.
 * Thread-safety: all functions may be called from several threads at once (libcurl is
 * initialised once, each call uses its own handle); the output buffers are the
 * caller's. Progress output, when enabled, goes to stderr. */
#ifndef CS_HUB_H
#define CS_HUB_H

#include <stddef.h>

#include "engine/err.h"

#define CS_HUB_PATH_MAX 4096       /* bytes of any local path we build */
#define CS_HUB_URL_MAX 4096        /* bytes of any URL (endpoint, redirect targets) */
#define CS_HUB_TOKEN_MAX 1024      /* bytes of an access token */
#define CS_HUB_REPO_MAX 96         /* repo id length (the Hub's own limit) */
#define CS_HUB_REV_MAX 256         /* revision (branch, tag, commit) length */
#define CS_HUB_ETAG_MAX 128        /* a normalized ETag used as a blob file name */
#define CS_HUB_COMMIT_LEN 40       /* hex digits of a commit hash */
#define CS_HUB_MAX_FILE_BYTES (256ull << 30) /* largest file we accept (gpt2-xl is 6.4 GB) */
#define CS_HUB_MAX_HEADER_BYTES (64 * 1024)  /* total response header bytes per response */
#define CS_HUB_MAX_REDIRECTS 10
#define CS_HUB_MAX_RETRIES 3       /* extra attempts after a cut transfer, 429 or 5xx */
#define CS_HUB_CONNECT_TIMEOUT_S 10.0 /* default connect timeout (huggingface_hub's default too) */
#define CS_HUB_CONNECT_TIMEOUT_MAX_S 600.0

/* Where and how to reach the Hub. Plain value, owned by the caller. */
typedef struct cs_hub_env {
    char cache[CS_HUB_PATH_MAX];   /* hub cache directory (need not exist yet) */
    char endpoint[CS_HUB_URL_MAX]; /* e.g. "https://huggingface.co", no trailing '/' */
    char token[CS_HUB_TOKEN_MAX];  /* "" when none */
    int offline;                   /* 1: cache only */
    int progress;                  /* 1: progress bar on stderr when it is a terminal, and one
                                      line per downloaded file when it is not; 0: silent */
    double connect_timeout_s;      /* <= 0: CS_HUB_CONNECT_TIMEOUT_S */
} cs_hub_env;

/* Fills env from the environment (see above); progress defaults to 1. Fails on an
 * unusable value (no HOME and no cache variable, HF_ENDPOINT not http(s), a token with
 * spaces or control characters, HF_HUB_ETAG_TIMEOUT not a number in (0, 600]). */
int cs_hub_env_init(cs_hub_env *env, cs_err *err);

/* A parsed model name. */
typedef struct cs_hub_ref {
    char repo[CS_HUB_REPO_MAX + 1];    /* "ORG/NAME" or "NAME" */
    char revision[CS_HUB_REV_MAX + 1]; /* "main" when not given */
} cs_hub_ref;

/* Parses "REPO[@REVISION]". The repo id follows the Hub's rules (one or two parts of
 * [A-Za-z0-9._-], no "--" or "..", not starting or ending with '-' or '.', at most 96
 * characters); the revision must be a safe relative path (no "..", no leading '/'). */
int cs_hub_parse_ref(const char *model, cs_hub_ref *out, cs_err *err);

/* CACHE/models--ORG--NAME into out. */
int cs_hub_repo_dir(const cs_hub_env *env, const char *repo, char *out, size_t cap, cs_err *err);

/* Looks the model up in the cache only (refs/REVISION -> snapshots/COMMIT, or the commit
 * itself when REVISION is a 40-digit hash). Returns 0 and the snapshot directory in
 * dir_out when every required file is there; 1 when not (err then says what is missing,
 * e.g. "no refs/main" or "snapshot COMMIT lacks vocab.json"); -1 on error. */
int cs_hub_find_cached(const cs_hub_env *env, const cs_hub_ref *ref, char *dir_out, size_t cap, cs_err *err);

/* Downloads what the cache lacks for ref and returns its snapshot directory. Online it
 * always asks the Hub which commit REVISION is now (one HEAD request per file) and
 * downloads only blobs that are not cached yet; when the Hub cannot be reached at all
 * and the model is cached, it warns on stderr (if env->progress) and returns the cached
 * snapshot; when it is not cached the message starts "cannot reach the Hub at URL" and
 * says what works without the Hub. Offline it is cs_hub_find_cached with the offline
 * message below when the model is missing. */
int cs_hub_pull_env(const cs_hub_env *env, const cs_hub_ref *ref, char *dir_out, size_t cap, cs_err *err);

/* Model name or directory -> a directory to load:
 *   - an existing directory is returned as it is;
 *   - otherwise a Hub name is looked up in the cache and, when missing (or incomplete),
 *     pulled if allow_download is set and the environment is not offline. A cached
 *     model is used without asking the Hub (no network at all on that path).
 * Messages: "model X not found on the Hub (check the name)"; "model X requires
 * authentication: set HF_TOKEN"; "model X is not in the cache at PATH and HF_HUB_OFFLINE
 * is set: run `cserve pull X` on a machine with network access or copy the cache". */
int cs_hub_resolve_env(const cs_hub_env *env, const char *model, char *dir_out, size_t cap, int allow_download,
                       cs_err *err);

/* The same with cs_hub_env_init's environment. */
int cs_hub_resolve(const char *model, char *dir_out, size_t cap, int allow_download, cs_err *err);
int cs_hub_pull(const char *model, char *dir_out, size_t cap, cs_err *err);

#endif
