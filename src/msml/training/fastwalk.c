/* The fast model's tree walker: the margins of every tree ensemble of a compiled model, in one call.

   Built by msml.training.fastmodel into the logged model's folder (cc -O2 -shared -fPIC, no machine-specific
   flags) and called by fastmodel_runtime through ctypes; it holds no model: the runtime passes the trees it read
   from the LightGBM text models. A split decides exactly as LightGBM 4's Tree::NumericalDecision and
   Tree::CategoricalDecision do, and each row's margin adds the leaves in tree order, as LightGBM's predictor
   adds them, so the sums are the same floating-point additions.

   Why not LightGBM's own predictor: at the gateway's batch sizes it spent ~40 ns per tree and row (700 trees,
   128 rows: 5.1 ms), most of it in per-row set-up and general-purpose checks; trees outer and rows inner keep
   one tree's nodes in L1 while every row walks it. */

#include <math.h>
#include <stdint.h>

/* One split. `kind`: bit 0 categorical, bit 1 missing goes left, bits 2-3 LightGBM's missing type
   (0 none, 1 zero, 2 NaN). A child >= 0 is a split's index in the nodes array, < 0 is ~(its leaf's index). */
typedef struct {
    double threshold;  /* numeric: a value <= threshold goes left */
    int32_t feature;
    int32_t left, right;
    int32_t cat_start; /* categorical: its left set, a bitset of cat_len 32-bit words from cat_start */
    uint16_t cat_len;
    uint8_t kind;
    uint8_t unused;
} Node;

#define ZERO_THRESHOLD 1e-35f /* LightGBM's kZeroThreshold */

static inline int32_t next(const Node *n, const double *row, const uint32_t *cat_words) {
    double v = row[n->feature];
    if (n->kind & 1) {
        if (isnan(v) || v <= -1.0 || v >= 2147483648.0) return n->right; /* NaN and negative codes go right */
        uint32_t code = (uint32_t)(int32_t)v;
        uint32_t word = code / 32;
        if (word >= n->cat_len) return n->right;
        return (cat_words[n->cat_start + word] >> (code % 32)) & 1u ? n->left : n->right;
    }
    int missing = (n->kind >> 2) & 3;
    if (isnan(v) && missing != 2) v = 0.0;
    if ((missing == 1 && v >= -ZERO_THRESHOLD && v <= ZERO_THRESHOLD) || (missing == 2 && isnan(v)))
        return (n->kind & 2) ? n->left : n->right;
    return v <= n->threshold ? n->left : n->right;
}

/* out[r * n_outputs + outputs[t]] += the leaf row r reaches in tree t, for every tree in order. x is row-major
   (n_rows x n_cols); out must hold zeros (or the margins to add to). */
void msml_walk(const double *x, int64_t n_rows, int32_t n_cols, const Node *nodes, const uint32_t *cat_words,
               const double *leaves, const int32_t *roots, const int32_t *outputs, int32_t n_trees,
               int32_t n_outputs, double *out) {
    for (int32_t t = 0; t < n_trees; t++) {
        const int32_t root = roots[t], o = outputs[t];
        for (int64_t r = 0; r < n_rows; r++) {
            const double *row = x + r * (int64_t)n_cols;
            int32_t i = root;
            while (i >= 0) i = next(nodes + i, row, cat_words);
            out[r * n_outputs + o] += leaves[~i];
        }
    }
}
