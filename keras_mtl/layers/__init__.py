"""Drop-in Keras layers for multi-task and transfer learning."""
