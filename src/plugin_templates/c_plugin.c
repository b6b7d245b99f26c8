/* A Flowgate transform plugin in C. Build: ./build.sh
 * bindings/ is what `wit-bindgen c wit/transform.wit` generated; batch.h
 * reads and writes the batch format (wit/BATCH-FORMAT.md in Flowgate). */
#include <stdlib.h>
#include <string.h>

#include "batch.h"
#include "bindings/transform.h"

/* The field set on every record: `config: {field: NAME}`, "processed" by default. */
static char *field = "processed";

static bool space(uint8_t c) {
    return c == ' ' || c == '\n' || c == '\r' || c == '\t';
}

bool exports_flowgate_transform_transformer_init(transform_string_t *config, transform_string_t *err) {
    /* A JSON parser of your choice belongs here; this finds "field": "NAME". */
    const uint8_t *p = config->ptr, *end = config->ptr + config->len;
    for (; p + 7 <= end; p++) {
        if (memcmp(p, "\"field\"", 7) != 0) continue;
        p += 7;
        while (p < end && (space(*p) || *p == ':')) p++;
        const uint8_t *name = p + 1, *close = name;
        while (close < end && *close != '"' && *close != '\\') close++;
        if (p >= end || *p != '"' || close >= end || *close != '"' || close == name) {
            transform_string_dup(err, "config key \"field\" must be a plain string");
            transform_string_free(config);
            return false;
        }
        field = strndup((const char *)name, (size_t)(close - name));
        break;
    }
    transform_string_free(config);
    transform_string_t message;
    transform_string_set(&message, "ready");
    flowgate_transform_host_log(FLOWGATE_TRANSFORM_HOST_LEVEL_INFO, &message);
    return true;
}

/* Each record: a JSON object gets `"FIELD":true` (a VALUE outcome); anything
 * else is refused (FAIL, with the reason). KEEP and EMIT are the others. */
void exports_flowgate_transform_transformer_process(transform_list_u8_t *batch, transform_list_u8_t *ret) {
    fg_reader in = {batch->ptr, batch->ptr + batch->len, false};
    fg_writer out = {0};
    uint32_t count = (uint32_t)fg_uint(&in, 4);
    fg_put_uint(&out, count, 4);
    for (uint32_t i = 0; i < count; i++) {
        fg_record rec = fg_next_record(&in);
        const uint8_t *v = rec.value.ptr;
        size_t n = rec.value.len;
        while (n && space(v[0])) v++, n--;
        while (n && space(v[n - 1])) n--;
        if (n < 2 || v[0] != '{' || v[n - 1] != '}') {
            static const char reason[] = "value is not a JSON object";
            fg_put_outcome(&out, i, FG_FAIL);
            fg_put_bytes32(&out, (fg_bytes){(const uint8_t *)reason, sizeof reason - 1});
            continue;
        }
        bool empty = true;
        for (size_t k = 1; k + 1 < n && empty; k++) empty = space(v[k]);
        fg_put_outcome(&out, i, FG_VALUE);
        size_t flen = strlen(field);
        fg_put_uint(&out, (n - 1) + (empty ? 0 : 1) + flen + 8, 4);
        fg_put(&out, v, n - 1);
        if (!empty) fg_put(&out, ",", 1);
        fg_put(&out, "\"", 1);
        fg_put(&out, field, flen);
        fg_put(&out, "\":true}", 7);
    }
    transform_list_u8_free(batch);
    ret->ptr = out.ptr;
    ret->len = out.len;
}
