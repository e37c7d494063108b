//! A software model of an Intel VT-d IOMMU (placeholder: being written).
