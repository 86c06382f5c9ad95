"""fervgg: facial emotion recognition with VGG16."""
