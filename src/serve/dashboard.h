/* cs_dash: the dashboard's static files, built into the binary.
 *
 * The page (src/serve/dashboard/: index.html, style.css, app.js) is turned
 * into a generated C file at build time (tools/embed_assets.sh, see the
 * Makefile), so the server reads no file at run time and the page works
 * offline: no CDN, no charting library (the charts are small SVG drawings in
 * app.js). The admin listener serves it at / and /dashboard/NAME; its data
 * comes from the JSON routes in dashboard.c (/api/cserve/...), the admin API
 * (/api/serve/applications/) and the router (the playground's requests go
 * through the admin listener to the router in-process: CP_DASH_PROXY).
 *
 * Thread-safety: the tables are constant; every function is pure. */
#ifndef CS_SERVE_DASHBOARD_H
#define CS_SERVE_DASHBOARD_H

#include <stddef.h>

typedef struct cs_dash_asset {
    const char *name;             /* file name under src/serve/dashboard/, e.g. "app.js" */
    const unsigned char *data;    /* its bytes (NUL-terminated past len) */
    size_t len;
} cs_dash_asset;

/* Defined by the generated file. */
extern const cs_dash_asset cs_dash_assets[];
extern const size_t cs_dash_n_assets;

/* The asset of that name, or NULL. */
const cs_dash_asset *cs_dash_find(const char *name);

/* The Content-Type for a file name, by its extension. */
const char *cs_dash_content_type(const char *name);

#endif
