/* add-header in C: sets one header on every record, never looking at the
 * value. Config: {"name": "...", "value": "..."}. Built against
 * wit/transform.wit with `wit-bindgen c` (bindings/), without a Flowgate
 * helper: batch.h reads and writes the batch format. */
#include <stdlib.h>
#include <string.h>

#include "batch.h"
#include "bindings/transform.h"

static char *header_name, *header_value;

/* The string value of `"key": "..."` in a flat JSON object, unescaped
 * (\" and \\ only: enough for a header); NULL when it is not there. */
static char *json_string(const char *json, size_t len, const char *key) {
    size_t klen = strlen(key);
    for (size_t i = 0; i + klen + 2 <= len; i++) {
        if (json[i] != '"' || strncmp(json + i + 1, key, klen) != 0 || json[i + 1 + klen] != '"') continue;
        size_t j = i + klen + 2;
        while (j < len && (json[j] == ' ' || json[j] == ':')) j++;
        if (j >= len || json[j] != '"') return NULL;
        char *out = malloc(len - j);
        size_t n = 0;
        for (j++; j < len && json[j] != '"'; j++) {
            if (json[j] == '\\' && j + 1 < len) j++;
            out[n++] = json[j];
        }
        out[n] = '\0';
        return out;
    }
    return NULL;
}

static void set_error(transform_string_t *err, const char *message) {
    transform_string_dup(err, message);
}

bool exports_flowgate_transform_transformer_init(transform_string_t *config, transform_string_t *err) {
    header_name = json_string((const char *)config->ptr, config->len, "name");
    header_value = json_string((const char *)config->ptr, config->len, "value");
    transform_string_free(config);
    if (!header_name || !header_value) {
        set_error(err, "config needs \"name\" and \"value\" (strings)");
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
        /* EMIT one record: the input's fields, this header set (replacing one
         * of the same name). */
        fg_put_outcome(&out, i, FG_EMIT);
        fg_put_uint(&out, 1, 4);
        fg_put_uint(&out, (rec.has_key ? 1 : 0) | (rec.has_timestamp ? 2 : 0), 1);
        if (rec.has_key) fg_put_bytes32(&out, rec.key);
        fg_put_bytes32(&out, rec.value);
        if (rec.has_timestamp) fg_put_uint(&out, (uint64_t)rec.timestamp, 8);
        uint16_t kept = 0;
        for (uint16_t h = 0; h < rec.header_count; h++) {
            fg_header hd = fg_header_at(&rec, h);
            kept += !(hd.name.len == name_len && memcmp(hd.name.ptr, header_name, name_len) == 0);
        }
        fg_put_uint(&out, kept + 1u, 2);
        for (uint16_t h = 0; h < rec.header_count; h++) {
            fg_header hd = fg_header_at(&rec, h);
            if (hd.name.len == name_len && memcmp(hd.name.ptr, header_name, name_len) == 0) continue;
            fg_put_uint(&out, hd.name.len, 2);
            fg_put(&out, hd.name.ptr, hd.name.len);
            fg_put_bytes32(&out, hd.value);
        }
        fg_put_uint(&out, name_len, 2);
        fg_put(&out, header_name, name_len);
        fg_put_bytes32(&out, value);
    }
    transform_list_u8_free(batch);
    transform_string_t counter;
    transform_string_set(&counter, "records");
    flowgate_transform_host_counter(&counter, count);
    ret->ptr = out.ptr;
    ret->len = out.len;
}
