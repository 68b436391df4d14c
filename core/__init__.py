"""EZ Runner core: model discovery, hardware, planning, rendering and packing. Never imports streamlit."""
