//! Rebuilds pydantic models the store itself wrote, without validating them again.
//!
//! Every replayed message was produced by the SDK's own model and stored byte for byte, so
//! validating it a second time only costs time: on a replay that is most of the work left
//! in Python. For classes whose fields are plain JSON values (checked by the SDK adapter
//! before it uses this), setting the instance's `__dict__` and pydantic's bookkeeping slots
//! directly yields the same object validation would, at a fraction of the cost.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyFrozenSet, PyList, PySet, PyString, PyType};

fn set_slot(obj: &Bound<'_, PyAny>, name: &Bound<'_, PyString>, value: &Bound<'_, PyAny>) -> PyResult<()> {
    // `object.__setattr__`: pydantic's own `__setattr__` would validate (or refuse) it.
    let rc = unsafe { pyo3::ffi::PyObject_GenericSetAttr(obj.as_ptr(), name.as_ptr(), value.as_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(PyErr::fetch(obj.py()))
    }
}

/// Instances of `cls` from parsed JSON objects. A missing `required` field raises
/// `ValueError`, as does a key outside `fields` unless `extra_allowed` (then it goes to
/// `__pydantic_extra__`); the caller then validates the normal way. With `root`, each instance is wrapped in that
/// `RootModel` class (the SDK 1.x `JSONRPCMessage`).
#[pyfunction]
#[pyo3(signature = (cls, items, fields, required, extra_allowed, root=None))]
pub fn construct_models<'py>(
    cls: &Bound<'py, PyType>,
    items: &Bound<'py, PyList>,
    fields: &Bound<'py, PyFrozenSet>,
    required: &Bound<'py, PyFrozenSet>,
    extra_allowed: bool,
    root: Option<&Bound<'py, PyType>>,
) -> PyResult<Bound<'py, PyList>> {
    let py = cls.py();
    let new = py.get_type::<pyo3::types::PyAny>().getattr("__new__")?;
    let dict_name = PyString::intern(py, "__dict__");
    let fields_set_name = PyString::intern(py, "__pydantic_fields_set__");
    let extra_name = PyString::intern(py, "__pydantic_extra__");
    let private_name = PyString::intern(py, "__pydantic_private__");
    let root_name = PyString::intern(py, "root");
    let none = py.None().into_bound(py);
    let out = PyList::empty(py);
    for item in items.iter() {
        let data = item.cast_into::<PyDict>().map_err(|_| PyValueError::new_err("not a JSON object"))?;
        for key in required.iter() {
            if !data.contains(&key)? {
                return Err(PyValueError::new_err(format!("missing field {key}")));
            }
        }
        let mut extra: Option<Bound<'py, PyDict>> = None;
        for key in data.keys() {
            if !fields.contains(&key)? {
                if !extra_allowed {
                    return Err(PyValueError::new_err(format!("unexpected field {key}")));
                }
                extra.get_or_insert_with(|| PyDict::new(py)).set_item(&key, data.get_item(&key)?)?;
            }
        }
        if let Some(extra) = &extra {
            for key in extra.keys() {
                data.del_item(key)?;
            }
        }
        let fields_set = PySet::new(py, data.keys())?;
        let obj = new.call1((cls,))?;
        set_slot(&obj, &dict_name, data.as_any())?;
        set_slot(&obj, &fields_set_name, fields_set.as_any())?;
        match (&extra, extra_allowed) {
            (Some(extra), _) => set_slot(&obj, &extra_name, extra.as_any())?,
            (None, true) => set_slot(&obj, &extra_name, PyDict::new(py).as_any())?,
            (None, false) => set_slot(&obj, &extra_name, &none)?,
        }
        set_slot(&obj, &private_name, &none)?;
        match root {
            None => out.append(obj)?,
            Some(root) => {
                let wrapper = new.call1((root,))?;
                let inner = PyDict::new(py);
                inner.set_item(&root_name, &obj)?;
                set_slot(&wrapper, &dict_name, inner.as_any())?;
                set_slot(&wrapper, &fields_set_name, PySet::new(py, [&root_name])?.as_any())?;
                set_slot(&wrapper, &extra_name, &none)?;
                set_slot(&wrapper, &private_name, &none)?;
                out.append(wrapper)?;
            }
        }
    }
    Ok(out)
}
