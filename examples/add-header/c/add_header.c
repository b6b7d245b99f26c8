/* add-header in C: sets one header on every record, never looking at the
 * value. Config: {"name": "...", "value": "..."}. Built against
 * wit/transform.wit with `wit-bindgen c` (bindings/), without a Flowgate
 * helper: batch.h reads and writes the batch format. */
#include <stdlib.h>
#include <string.h>

#include "batch.h"
#include "bindings/transform.h"

static char *header_name, *header_value;

/* A config is a flat JSON object; this reads just that much of JSON. */
typedef struct {
    const char *at, *end;
} cursor;

static void skip_space(cursor *c) {
    while (c->at < c->end && (*c->at == ' ' || *c->at == '\n' || *c->at == '\t' || *c->at == '\r')) c->at++;
}

/* A JSON string at the cursor, unescaped (a \uXXXX escape is kept as it is:
 * enough for header names and values); NULL if there is none. */
static char *read_string(cursor *c) {
    if (c->at >= c->end || *c->at != '"') return NULL;
    char *out = malloc((size_t)(c->end - c->at));
    size_t n = 0;
    for (c->at++; c->at < c->end && *c->at != '"'; c->at++) {
        if (*c->at == '\\' && c->at + 1 < c->end) {
            char e = *++c->at;
            if (e == 'u') {
                out[n++] = '\\';
                out[n++] = 'u';
                continue;
            }
            out[n++] = e == 'n' ? '\n' : e == 't' ? '\t' : e == 'r' ? '\r' : e == 'b' ? '\b' : e == 'f' ? '\f' : e;
        } else {
            out[n++] = *c->at;
        }
    }
    if (c->at >= c->end) {
        free(out);
        return NULL;
    }
    c->at++;
    out[n] = '\0';
    return out;
}

/* Reads `{"name": "...", "value": "..."}` into the two globals; an error
 * message naming the key at fault otherwise. */
static const char *read_config(const char *json, size_t len, char *err, size_t err_len) {
    cursor c = {json, json + len};
    skip_space(&c);
    if (c.at < c.end && *c.at == '{') {
        c.at++;
        for (;;) {
            skip_space(&c);
            if (c.at < c.end && *c.at == '}') break;
            char *key = read_string(&c);
            if (!key) return "config is not a JSON object";
            skip_space(&c);
            if (c.at >= c.end || *c.at != ':') return "config is not a JSON object";
            c.at++;
            skip_space(&c);
            char **slot = strcmp(key, "name") == 0 ? &header_name : strcmp(key, "value") == 0 ? &header_value : NULL;
            if (!slot) {
                strncpy(err, "unknown config key \"", err_len);
                strncat(err, key, err_len - strlen(err) - 2);
                strcat(err, "\"");
                free(key);
                return err;
            }
            char *value = read_string(&c);
            if (!value) {
                strncpy(err, "config key \"", err_len);
                strncat(err, key, err_len - strlen(err) - 20);
                strcat(err, "\" must be a string");
                free(key);
                return err;
            }
            free(*slot); /* a key given twice: the last wins */
            *slot = value;
            free(key);
            skip_space(&c);
            if (c.at < c.end && *c.at == ',') {
                c.at++;
                continue;
            }
            if (c.at < c.end && *c.at == '}') break;
            return "config is not a JSON object";
        }
    } else if (c.at < c.end) {
        return "config is not a JSON object";
    }
    if (!header_name) return "config key \"name\" is required";
    if (!header_value) return "config key \"value\" is required";
    return NULL;
}

static void set_error(transform_string_t *err, const char *message) {
    transform_string_dup(err, message);
}

bool exports_flowgate_transform_transformer_init(transform_string_t *config, transform_string_t *err) {
    char why[256];
    const char *problem = read_config((const char *)config->ptr, config->len, why, sizeof why);
    transform_string_free(config);
    if (problem) {
        set_error(err, problem);
        return false;
    }
    /* No printf: wasi-libc's stdio imports WASI preview 1, which would need
     * the preview 1 adapter (docs/plugins.md). */
    static const char ready[] = "add-header ready: ";
    size_t n = strlen(ready), ln = strlen(header_name), lv = strlen(header_value);
    char *line = malloc(n + ln + 3 + lv + 1);
    memcpy(line, ready, n);
    memcpy(line + n, header_name, ln);
    memcpy(line + n + ln, " = ", 3);
    memcpy(line + n + ln + 3, header_value, lv + 1);
    transform_string_t message;
    transform_string_set(&message, line);
    flowgate_transform_host_log(FLOWGATE_TRANSFORM_HOST_LEVEL_INFO, &message);
    free(line);
    return true;
}

void exports_flowgate_transform_transformer_process(transform_list_u8_t *batch, transform_list_u8_t *ret) {
    fg_reader in = {batch->ptr, batch->ptr + batch->len, false};
    fg_writer out = {0};
    uint32_t count = (uint32_t)fg_uint(&in, 4);
    fg_put_uint(&out, count, 4);
    size_t name_len = strlen(header_name);
    fg_bytes value = {(const uint8_t *)header_value, strlen(header_value)};
    for (uint32_t i = 0; i < count; i++) {
        fg_record rec = fg_next_record(&in);
        size_t start = out.len;
        /* EMIT one record: the input's fields, this header set (replacing one
         * of the same name). */
        fg_put_outcome(&out, i, FG_EMIT);
        fg_put_uint(&out, 1, 4);
        fg_put_uint(&out, (rec.has_key ? 1 : 0) | (rec.has_timestamp ? 2 : 0), 1);
        if (rec.has_key) fg_put_bytes32(&out, rec.key);
        fg_put_bytes32(&out, rec.value);
        if (rec.has_timestamp) fg_put_uint(&out, (uint64_t)rec.timestamp, 8);
        /* The header replaces the first of the same name, where it is, and
         * drops the others; without one it goes last. */
        uint16_t same = 0;
        fg_reader hs = fg_headers(&rec);
        for (uint16_t h = 0; h < rec.header_count; h++) {
            fg_header hd = fg_next_header(&hs);
            same += hd.name.len == name_len && memcmp(hd.name.ptr, header_name, name_len) == 0;
        }
        if (same == 0 && rec.header_count == UINT16_MAX) {
            /* Undo the EMIT begun above: a record cannot hold one more header. */
            out.len = start;
            static const char reason[] = "the record has 65535 headers already";
            fg_put_outcome(&out, i, FG_FAIL);
            fg_put_bytes32(&out, (fg_bytes){(const uint8_t *)reason, sizeof reason - 1});
            continue;
        }
        fg_put_uint(&out, rec.header_count - same + 1u, 2);
        bool placed = false;
        hs = fg_headers(&rec);
        for (uint16_t h = 0; h < rec.header_count; h++) {
            fg_header hd = fg_next_header(&hs);
            bool is_it = hd.name.len == name_len && memcmp(hd.name.ptr, header_name, name_len) == 0;
            if (is_it && placed) continue;
            fg_put_uint(&out, hd.name.len, 2);
            fg_put(&out, hd.name.ptr, hd.name.len);
            fg_put_bytes32(&out, is_it ? value : hd.value);
            placed |= is_it;
        }
        if (!placed) {
            fg_put_uint(&out, name_len, 2);
            fg_put(&out, header_name, name_len);
            fg_put_bytes32(&out, value);
        }
    }
    transform_list_u8_free(batch);
    transform_string_t counter;
    transform_string_set(&counter, "records");
    flowgate_transform_host_counter(&counter, count);
    ret->ptr = out.ptr;
    ret->len = out.len;
}
