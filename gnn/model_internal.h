/*
 * model_internal.h - what a loaded ds4sci_model holds, for gnn/ sources only.
 * model_file.c defines the loader; everything else reads the model through et_desc.
 */
#ifndef DS4SCI_MODEL_INTERNAL_H
#define DS4SCI_MODEL_INTERNAL_H

#include "ds4sci.h"
#include "et_desc.h"

/* The validated description of a loaded model; never NULL for a non-NULL model. */
const et_desc *ds4sci_model_desc(const ds4sci_model *model);

#endif /* DS4SCI_MODEL_INTERNAL_H */
