/* cs_chat_tpl: the plain-text chat template of POST /v1/chat/completions.
 *
 * GPT-2 is a base model with no chat format of its own: the messages become
 * one plain-text prompt, and the reply is the text the model writes after
 * it, up to the next role marker. A template is a JSON object; every key is
 * optional (the default in brackets):
 *   prefix      text before the first message                   [""]
 *   system      a system (or developer) message, {content} once ["System: {content}\n"]
 *   user        a user message, {content} once                  ["User: {content}\n"]
 *   assistant   an earlier assistant message, {content} once    ["Assistant: {content}\n"]
 *   generation  after the last message: the reply continues it  ["Assistant:"]
 *   stop        a string or a list of up to CS_CHAT_TPL_MAX_STOP: where a reply
 *               ends, besides the request's own stop; [] for none
 *               [the user and system markers, i.e. the text before {content}
 *               trimmed, after a newline when the assistant's text ends with
 *               one: "\nUser:", "\nSystem:"]
 * The prompt is prefix, then each message as its role's text with {content}
 * replaced by the message's text, then generation. No other text of a
 * template is special.
 *
 * A template in normal form (cs_chat_tpl_norm's output) has all six keys,
 * "stop" as a list; it is immutable once made and may be shared between
 * threads by reference (jansson's reference counts are atomic).
 *
 * Errors name the key ("user_config.chat_template.user: must hold {content}
 * exactly once ..."). No function keeps a pointer to its arguments. */
#ifndef CS_CHAT_TPL_H
#define CS_CHAT_TPL_H

#include <jansson.h>
#include <stddef.h>

#include "engine/err.h"

#define CS_CHAT_TPL_CONTENT "{content}"
#define CS_CHAT_TPL_MAX_BYTES 4096     /* bytes of one text of a template */
#define CS_CHAT_TPL_MAX_STOP 4         /* stop strings of a template */
#define CS_CHAT_TPL_MAX_STOP_BYTES 256 /* bytes of one (the request's stop strings' limit) */

/* Checks in (NULL: the default template) and fills in every key: *out is a
 * new reference to the normal form. what names the template in errors.
 * -1 with err, *out NULL. */
int cs_chat_tpl_norm(const json_t *in, const char *what, json_t **out, cs_err *err);

/* cs_chat_tpl_norm of a template given as text (a command-line argument):
 * arg is the JSON object itself when it starts with '{' (after spaces), else
 * the path of a file holding it. */
int cs_chat_tpl_load(const char *arg, json_t **out, cs_err *err);

/* Where {content} is in s (n bytes), or NULL; *count: how many times it is there. */
const char *cs_chat_tpl_find_content(const char *s, size_t n, int *count);

#endif
